import type { NatsConnection } from '@nats-io/nats-core';
import { createClient, type LlmProxyClient } from '../client/index.js';
import { ProxyError } from '../contract/errors.js';
import type { Logger } from '../telemetry/logger.js';

/**
 * The front door's one NATS connection and the typed client over it. The front door listens for
 * HTTP at once and connects in the background (retrying until NATS answers), so a front door
 * started before NATS serves once NATS is up; until then every bus route answers 503 and `/readyz`
 * says why. Holds no other state: any number of front doors can run behind a load balancer.
 */
export class BusLink {
  #client: LlmProxyClient | undefined;
  #connected = false;
  #closed = false;

  constructor(
    connecting: Promise<NatsConnection>,
    private readonly options: { secret: string | undefined; subjectPrefix: string; logger: Logger },
  ) {
    connecting.then(
      (connection) => this.#attach(connection),
      (error: unknown) => options.logger.error({ err: error }, 'could not connect to NATS'),
    );
  }

  /** Whether the connection is up now (false before the first connect and while reconnecting). */
  get connected(): boolean {
    return this.#connected;
  }

  /** The client, or a 503 `no_provider_available` while there is no connection. */
  client(): LlmProxyClient {
    if (this.#client === undefined || !this.#connected) {
      throw new ProxyError('no_provider_available', 'the front door is not connected to NATS yet', {
        retryable: true,
        retryAfterMs: 1_000,
      });
    }
    return this.#client;
  }

  async close(): Promise<void> {
    this.#closed = true;
    const connection = this.#client?.connection;
    if (connection !== undefined && !connection.isClosed()) await connection.drain().catch(() => undefined);
  }

  #attach(connection: NatsConnection): void {
    if (this.#closed) {
      void connection.close();
      return;
    }
    this.#client = createClient({ connection, secret: this.options.secret, subjectPrefix: this.options.subjectPrefix });
    this.#connected = true;
    this.options.logger.info({ server: connection.getServer() }, 'front door connected to NATS');
    void (async () => {
      for await (const status of connection.status()) {
        if (status.type === 'disconnect') {
          this.#connected = false;
          this.options.logger.warn({ server: status.server }, 'disconnected from NATS; reconnecting');
        } else if (status.type === 'reconnect') {
          this.#connected = true;
          this.options.logger.info({ server: status.server }, 'reconnected to NATS');
        }
      }
    })().catch(() => undefined);
    void connection.closed().then(() => {
      this.#connected = false;
    });
  }
}
