// `ignis-ws-native/ignis`: the Ignis WebSocketComponent, reading the same
// bindings as `@venizia/ignis/websocket` and starting the native server in a
// post-start hook, on the application's own port: on Node the component
// attaches to the HTTP server Ignis started; on Bun the native server takes
// the port over and hands every other request to the application's handler.
//
// `@venizia/ignis` is an optional peer dependency: only this entry point
// loads it.

import { BaseComponent, Binding, CoreBindings, inject } from '@venizia/ignis';
import type { BaseApplication } from '@venizia/ignis';
import { DefaultRedisHelper, getError, RuntimeModules } from '@venizia/ignis-helpers';
import { WebSocketDefaults } from './constants';
import { WebSocketServer } from './server';
import type { IBunWebSocketConfig, IWebSocketServerOptions } from './types';

interface BunServer {
  port: number;
  hostname: string;
  stop(closeActiveConnections?: boolean): unknown;
}

export class WebSocketBindingKeys {
  static readonly WEBSOCKET_INSTANCE = '@app/websocket/instance';
  static readonly SERVER_OPTIONS = '@app/websocket/server-options';
  static readonly REDIS_CONNECTION = '@app/websocket/redis-connection';
  static readonly AUTHENTICATE_HANDLER = '@app/websocket/authenticate-handler';
  static readonly VALIDATE_ROOM_HANDLER = '@app/websocket/validate-room-handler';
  static readonly CLIENT_CONNECTED_HANDLER = '@app/websocket/client-connected-handler';
  static readonly CLIENT_DISCONNECTED_HANDLER = '@app/websocket/client-disconnected-handler';
  static readonly MESSAGE_HANDLER = '@app/websocket/message-handler';
  static readonly OUTBOUND_TRANSFORMER = '@app/websocket/outbound-transformer';
  static readonly HANDSHAKE_HANDLER = '@app/websocket/handshake-handler';
}

/** The component's options (the original's `IServerOptions`, plus this project's extras). */
export interface IServerOptions
  extends Omit<IWebSocketServerOptions, 'authenticateFn' | 'redis' | 'redisConnection' | 'server' | 'identifier'> {
  identifier: string;
  path?: string;
  defaultRooms?: string[];
  serverOptions?: IBunWebSocketConfig;
  heartbeatInterval?: number;
  heartbeatTimeout?: number;
  requireEncryption?: boolean;
}

export const DEFAULT_SERVER_OPTIONS: IServerOptions = {
  identifier: 'WEBSOCKET_SERVER',
  path: WebSocketDefaults.PATH,
};

const HANDLER_KEYS = [
  WebSocketBindingKeys.REDIS_CONNECTION,
  WebSocketBindingKeys.AUTHENTICATE_HANDLER,
  WebSocketBindingKeys.VALIDATE_ROOM_HANDLER,
  WebSocketBindingKeys.CLIENT_CONNECTED_HANDLER,
  WebSocketBindingKeys.CLIENT_DISCONNECTED_HANDLER,
  WebSocketBindingKeys.MESSAGE_HANDLER,
  WebSocketBindingKeys.OUTBOUND_TRANSFORMER,
  WebSocketBindingKeys.HANDSHAKE_HANDLER,
];

export class WebSocketComponent extends BaseComponent {
  protected serverOptions: IServerOptions = DEFAULT_SERVER_OPTIONS;

  constructor(private readonly application: BaseApplication) {
    const bindings: Record<string, Binding> = {
      [WebSocketBindingKeys.SERVER_OPTIONS]: Binding.bind({ key: WebSocketBindingKeys.SERVER_OPTIONS }).toValue(DEFAULT_SERVER_OPTIONS),
    };
    for (const key of HANDLER_KEYS) bindings[key] = Binding.bind({ key }).toValue(null);
    super({ scope: WebSocketComponent.name, initDefault: { enable: true, container: application }, bindings });
  }

  private get<T>(key: string): T | undefined {
    return (this.application.get({ key, isOptional: true }) as T | null) ?? undefined;
  }

  /** Reads and validates the bindings, with the original's messages. */
  private resolveBindings() {
    const extra = this.get<Partial<IServerOptions>>(WebSocketBindingKeys.SERVER_OPTIONS) ?? {};
    this.serverOptions = Object.assign({}, DEFAULT_SERVER_OPTIONS, extra);
    const redisConnection = this.get<unknown>(WebSocketBindingKeys.REDIS_CONNECTION);
    if (!(redisConnection instanceof DefaultRedisHelper)) {
      throw getError({
        message:
          '[WebSocketComponent][resolveBindings] Invalid instance of redisConnection | Please init connection with RedisHelper for single redis connection or RedisClusterHelper for redis cluster mode!',
      });
    }
    const authenticateFn = this.get<IWebSocketServerOptions['authenticateFn']>(WebSocketBindingKeys.AUTHENTICATE_HANDLER);
    if (!authenticateFn) {
      throw getError({ message: '[WebSocketComponent] Invalid authenticateFn to setup WebSocket server!' });
    }
    return {
      redisConnection,
      authenticateFn,
      validateRoomFn: this.get<IWebSocketServerOptions['validateRoomFn']>(WebSocketBindingKeys.VALIDATE_ROOM_HANDLER),
      clientConnectedFn: this.get<IWebSocketServerOptions['clientConnectedFn']>(WebSocketBindingKeys.CLIENT_CONNECTED_HANDLER),
      clientDisconnectedFn: this.get<IWebSocketServerOptions['clientDisconnectedFn']>(WebSocketBindingKeys.CLIENT_DISCONNECTED_HANDLER),
      messageHandler: this.get<IWebSocketServerOptions['messageHandler']>(WebSocketBindingKeys.MESSAGE_HANDLER),
      outboundTransformer: this.get<IWebSocketServerOptions['outboundTransformer']>(WebSocketBindingKeys.OUTBOUND_TRANSFORMER),
      handshakeFn: this.get<IWebSocketServerOptions['handshakeFn']>(WebSocketBindingKeys.HANDSHAKE_HANDLER),
    };
  }

  /**
   * Bun: the application's Bun.serve server offers no socket to hand over,
   * so the native server takes its port. The application's Hono handler
   * moves to a loopback Bun.serve that receives, byte for byte, every
   * connection that is not a WebSocket upgrade at `path`. The application's
   * server instance becomes that server as the application sees it (public
   * port, real client in `requestIP`); its `stop()` also stops the
   * WebSocket server, so `app.stop()` frees the port as before.
   */
  private async takeOverBunPort(
    original: BunServer,
    options: IServerOptions,
    resolved: ReturnType<WebSocketComponent['resolveBindings']>,
  ): Promise<WebSocketServer> {
    const hono = this.application.getServer();
    const port = original.port;
    const host = this.application.getServerHost?.() ?? original.hostname;
    const ws = new WebSocketServer({
      ...options,
      ...resolved,
      host,
      port,
      fetch: (req: Request, server: object) => hono.fetch(req, server),
    });
    // The port is free between these two lines only, while the
    // application is still starting.
    await Promise.resolve(original.stop(false)).catch(() => undefined);
    await ws.configure();
    const front = ws.getFetchServer()!;
    const app = this.application as unknown as { server: { instance: unknown } };
    app.server.instance = new Proxy(front, {
      get: (target, key) => {
        if (key === 'stop') {
          return (closeActiveConnections?: boolean) => {
            void ws.shutdown();
            return target.stop(closeActiveConnections);
          };
        }
        return Reflect.get(target, key);
      },
    });
    return ws;
  }

  binding(): void {
    if (!this.application) {
      throw getError({ message: '[binding] Invalid application to bind WebSocketComponent' });
    }
    const resolved = this.resolveBindings();
    const options = this.serverOptions;
    this.application.registerPostStartHook({
      identifier: 'websocket-initialize',
      hook: async () => {
        const instance = this.application.getServerInstance() as unknown;
        if (!instance) {
          throw getError({ message: '[WebSocketComponent] Server instance not available!' });
        }
        const onNode = RuntimeModules.detect() === RuntimeModules.NODE;
        const ownPort = options.port !== undefined || options.noServer === false;
        let ws: WebSocketServer;
        if (ownPort) {
          ws = new WebSocketServer({ ...options, ...resolved });
        } else if (onNode) {
          // Node: upgrades arriving at the application's http.Server are handed over.
          ws = new WebSocketServer({ ...options, ...resolved, noServer: true });
          ws.attach(instance as import('node:http').Server);
        } else {
          ws = await this.takeOverBunPort(instance as BunServer, options, resolved);
        }
        if (!ws.isRunning()) await ws.configure();
        this.application.bind({ key: WebSocketBindingKeys.WEBSOCKET_INSTANCE }).toValue(ws);
      },
    });
  }
}

// The parameter decorator the original applies with TypeScript decorators:
// the application instance is injected as the first constructor argument.
inject({ key: CoreBindings.APPLICATION_INSTANCE })(WebSocketComponent, undefined as unknown as string, 0);
