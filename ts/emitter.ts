// `WebSocketEmitter`: publishes to every instance through Redis without
// running a server (background jobs, other services). Same envelope as the
// original (`serverId: "emitter"`), every publication awaited.

import { native } from './native';
import type { NativeEmitter } from '../index';
const { NativeEmitter: NativeEmitterClass } = native;
import { WebSocketOptionError, describe, normaliseHistory } from './options';
import { normaliseRedis } from './redis-options';
import type { IWebSocketEmitterOptions } from './types';

function json(data: unknown): string | undefined {
  return data === undefined ? undefined : JSON.stringify(data);
}

export class WebSocketEmitter {
  readonly identifier: string;
  private readonly native: NativeEmitter;

  constructor(opts: IWebSocketEmitterOptions) {
    if (!opts || typeof opts !== 'object') {
      throw new WebSocketOptionError('options', `expected an object, got ${describe(opts)}`);
    }
    this.identifier = opts.identifier ?? 'WebSocketEmitter';
    const name = opts.redis !== undefined ? 'redis' : 'redisConnection';
    const redis = normaliseRedis(name, opts.redis ?? opts.redisConnection);
    if (!redis) throw new WebSocketOptionError(name, '[WebSocketEmitter] Invalid redis connection!');
    const history = normaliseHistory(opts.history);
    this.native = new NativeEmitterClass(
      redis,
      history.history
        ? { size: history.historySize, ttl: history.historyTtl, rooms: history.historyRooms, defaultRooms: native.defaultOptions().defaultRooms }
        : null,
    );
  }

  /** Connects to Redis; rejects with the address when it cannot. */
  async configure(): Promise<void> {
    try {
      await this.native.configure();
    } catch (e) {
      throw new Error(`[ignis-ws-native] ${this.identifier}: ${(e as Error).message}`);
    }
  }

  async toClient(opts: { clientId: string; event: string; data?: unknown }): Promise<void> {
    await this.native.publish('client', opts.clientId, opts.event, json(opts.data), null);
  }

  async toUser(opts: { userId: string; event: string; data?: unknown }): Promise<void> {
    await this.native.publish('user', opts.userId, opts.event, json(opts.data), null);
  }

  async toRoom(opts: { room: string; event: string; data?: unknown; exclude?: string[] }): Promise<void> {
    await this.native.publish('room', opts.room, opts.event, json(opts.data), opts.exclude ?? null);
  }

  async broadcast(opts: { event: string; data?: unknown }): Promise<void> {
    await this.native.publish('broadcast', null, opts.event, json(opts.data), null);
  }

  async shutdown(): Promise<void> {
    await this.native.shutdown();
  }
}
