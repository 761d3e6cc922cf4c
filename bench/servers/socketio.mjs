// Socket.IO 4 on Node with @socket.io/redis-adapter (ioredis), its own
// client protocol: auth in the connect packet, rooms, acks not used.
import { Server } from 'socket.io';
import { createAdapter } from '@socket.io/redis-adapter';
import Redis from 'ioredis';

const pub = new Redis(process.env.REDIS_URL);
const sub = pub.duplicate();
const io = new Server({ transports: ['websocket'], serveClient: false });
io.adapter(createAdapter(pub, sub));
io.use((socket, next) => (socket.handshake.auth?.token ? next() : next(new Error('Authentication failed'))));
io.on('connection', socket => {
  socket.on('join', d => socket.join(d?.rooms ?? []));
  socket.on('echo', d => socket.emit('echo', d));
  socket.on('chat', d => io.to(d.room).emit('chat', d));
});
const http = (await import('node:http')).createServer();
io.attach(http);
http.listen(0, '127.0.0.1', () => process.stdout.write(`PORT ${http.address().port}\n`));
