// Scenario (r)'s handler, shared by every contender that runs it: what an
// application does with a typical client request. It validates an order
// of 1–2 KiB (already parsed from the frame by the server) field by field,
// prices it, and answers with a receipt of about 1 KiB. A bad order gets a
// short error instead.

const EMAIL = /^[^@\s]+@[^@\s]+\.[a-z]{2,}$/i;
const SKU = /^SKU-\d{4}$/;
const CURRENCIES = new Set(['EUR', 'USD', 'GBP']);
const TAX = { EUR: 0.2, USD: 0.08, GBP: 0.2 };

const str = (v, min, max) => typeof v === 'string' && v.length >= min && v.length <= max;

/** The receipt for a valid order; throws with the first problem otherwise. */
export function receipt(order) {
  if (!order || typeof order !== 'object') throw new Error('order must be an object');
  if (!str(order.id, 1, 64)) throw new Error('id');
  const c = order.customer;
  if (!c || !str(c.id, 1, 64) || !str(c.name, 1, 200) || !str(c.email, 3, 254) || !EMAIL.test(c.email)) {
    throw new Error('customer');
  }
  if (!CURRENCIES.has(order.currency)) throw new Error('currency');
  if (!Array.isArray(order.items) || order.items.length < 1 || order.items.length > 50) throw new Error('items');
  let subtotal = 0;
  const lines = [];
  for (const it of order.items) {
    if (!it || !SKU.test(it.sku) || !str(it.name, 1, 200)) throw new Error('item');
    if (!Number.isInteger(it.qty) || it.qty < 1 || it.qty > 1000) throw new Error('qty');
    if (typeof it.price !== 'number' || !(it.price >= 0) || it.price > 1e6) throw new Error('price');
    if (!Array.isArray(it.tags) || !it.tags.every(t => str(t, 1, 32))) throw new Error('tags');
    const total = Math.round(it.qty * it.price * 100) / 100;
    subtotal += total;
    lines.push({ sku: it.sku, qty: it.qty, unit: it.price, total });
  }
  if (order.note !== undefined && !str(order.note, 0, 2000)) throw new Error('note');
  if (Number.isNaN(Date.parse(order.createdAt))) throw new Error('createdAt');
  const tax = Math.round(subtotal * TAX[order.currency] * 100) / 100;
  return {
    orderId: order.id,
    status: 'accepted',
    customer: { id: c.id, name: c.name },
    currency: order.currency,
    lines,
    subtotal: Math.round(subtotal * 100) / 100,
    tax,
    total: Math.round((subtotal + tax) * 100) / 100,
    createdAt: order.createdAt,
    message: 'Thank you for your order. It will be prepared and shipped within two working days.',
  };
}

/** Answers an `order` frame through `sendToClient` (either helper's). */
export function answerOrder(send, clientId, data) {
  try {
    send({ clientId, event: 'receipt', data: receipt(data) });
  } catch (e) {
    send({ clientId, event: 'receipt', data: { orderId: data?.id ?? null, status: 'rejected', error: e.message } });
  }
}
