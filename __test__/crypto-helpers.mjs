// The documented encryption scheme (docs/PROTOCOL.md §9) with WebCrypto:
// ECDH P-256 (raw uncompressed public keys, base64), HKDF-SHA-256 with a
// 32-byte salt and info "ignis-ecdh-p256-aes-256-gcm-v1", AES-256-GCM with a
// 12-byte IV; frame {event:"encrypted", data:{iv, ct}}.
const subtle = globalThis.crypto.subtle;
const INFO = new TextEncoder().encode('ignis-ecdh-p256-aes-256-gcm-v1');
const b64 = buf => Buffer.from(buf).toString('base64');
const unb64 = s => new Uint8Array(Buffer.from(s, 'base64'));

export async function newKeyPair() {
  const pair = await subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, true, ['deriveBits']);
  const raw = await subtle.exportKey('raw', pair.publicKey);
  return { pair, publicKey: b64(raw) };
}

export async function deriveKey(privateKey, peerPublicKeyB64, saltB64) {
  const peer = await subtle.importKey('raw', unb64(peerPublicKeyB64), { name: 'ECDH', namedCurve: 'P-256' }, false, []);
  const shared = await subtle.deriveBits({ name: 'ECDH', public: peer }, privateKey, 256);
  const hkdf = await subtle.importKey('raw', shared, 'HKDF', false, ['deriveKey']);
  return subtle.deriveKey(
    { name: 'HKDF', hash: 'SHA-256', salt: unb64(saltB64), info: INFO },
    hkdf,
    { name: 'AES-GCM', length: 256 },
    false,
    ['encrypt', 'decrypt'],
  );
}

export async function encrypt(key, message) {
  const iv = globalThis.crypto.getRandomValues(new Uint8Array(12));
  const ct = await subtle.encrypt({ name: 'AES-GCM', iv }, key, new TextEncoder().encode(JSON.stringify(message)));
  return { event: 'encrypted', data: { iv: b64(iv), ct: b64(ct) } };
}

export async function decrypt(key, frame) {
  const pt = await subtle.decrypt({ name: 'AES-GCM', iv: unb64(frame.data.iv) }, key, unb64(frame.data.ct));
  return JSON.parse(new TextDecoder().decode(pt));
}

/** Server side of the scheme as application handlers: handshakeFn + outboundTransformer. */
export function serverEncryption() {
  const keys = new Map();
  return {
    keys,
    handshakeFn: async ({ clientId, data }) => {
      if (typeof data.publicKey !== 'string') return null;
      const { pair, publicKey } = await newKeyPair();
      const salt = b64(globalThis.crypto.getRandomValues(new Uint8Array(32)));
      keys.set(clientId, await deriveKey(pair.privateKey, data.publicKey, salt));
      return { serverPublicKey: publicKey, salt };
    },
    outboundTransformer: async ({ client, event, data }) => {
      const key = keys.get(client.id);
      if (!key) return null;
      return encrypt(key, { event, data });
    },
  };
}
