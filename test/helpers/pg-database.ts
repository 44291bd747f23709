import { randomBytes } from 'node:crypto';
import pg from 'pg';

/**
 * A database of its own for one test, on the machine's PostgreSQL (`POSTGRES_TEST_URL`, else
 * postgres://postgres@127.0.0.1:5432/postgres, trust auth): created by the test, dropped after it.
 */
export const POSTGRES_ADMIN_URL = process.env.POSTGRES_TEST_URL || 'postgres://postgres@127.0.0.1:5432/postgres';

export interface TestDatabase {
  name: string;
  /** The URL of the new database (same server and user as the admin URL). */
  url: string;
  /** A pool on it, for the test's own checks (closed by drop()). */
  pool: pg.Pool;
  drop(): Promise<void>;
}

/** A database URL with another database name (the same server and credentials). */
export function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

/**
 * A pool whose connection errors never become uncaught exceptions: `DROP DATABASE … WITH (FORCE)`
 * terminates backends that `pool.end()` has asked to close but that have not exited yet, and the
 * terminated client emits 'error' (as the sink's own pool does, src/sink/pg-pool.ts).
 */
export function testPool(url: string, max: number): pg.Pool {
  const pool = new pg.Pool({ connectionString: url, max });
  pool.on('error', () => undefined);
  pool.on('connect', (client) => {
    client.on('error', () => undefined);
  });
  return pool;
}

export async function createTestDatabase(prefix = 'llmp_test', adminUrl = POSTGRES_ADMIN_URL): Promise<TestDatabase> {
  const name = `${prefix}_${randomBytes(5).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = withDatabase(adminUrl, name);
  const pool = testPool(url, 2);
  return {
    name,
    url,
    pool,
    async drop() {
      await pool.end().catch(() => undefined);
      const client = new pg.Client({ connectionString: adminUrl });
      await client.connect();
      try {
        await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await client.end();
      }
    },
  };
}
