import type pg from 'pg';

/**
 * `usage_events` has one partition per UTC month, created by the sink before it writes the first
 * event of a month (under an advisory lock, so two sinks never race on the same one), and dropped
 * whole by the retention setting.
 */

/** Lock id of partition changes (any constant distinct from the migration lock). */
const PARTITION_LOCK = 0x6c6d7079;
const PARTITION_NAME = /^usage_events_p(\d{4})(\d{2})$/;

/** `usage_events_p202611` for November 2026 (`month` = year * 12 + month index). */
export function partitionName(month: number): string {
  const year = Math.floor(month / 12);
  return `usage_events_p${String(year).padStart(4, '0')}${String((month % 12) + 1).padStart(2, '0')}`;
}

/** The first instant of a month, as `YYYY-MM-01T00:00:00Z`. */
export function monthStartIso(month: number): string {
  return new Date(Date.UTC(Math.floor(month / 12), month % 12, 1)).toISOString();
}

function monthOfName(name: string): number | undefined {
  const match = PARTITION_NAME.exec(name);
  return match === null ? undefined : Number(match[1]) * 12 + Number(match[2]) - 1;
}

export class MonthlyPartitions {
  private readonly known = new Set<number>();

  constructor(private readonly pool: pg.Pool) {}

  /** Creates the partitions of these months that do not exist yet. */
  async ensure(months: Iterable<number>): Promise<void> {
    const missing = [...new Set(months)].filter((month) => !this.known.has(month)).sort((a, b) => a - b);
    if (missing.length === 0) return;
    await this.underLock(async (client) => {
      for (const month of missing) {
        // Names and bounds are built from integers here, never from input text.
        await client.query(
          `CREATE TABLE IF NOT EXISTS ${partitionName(month)} PARTITION OF usage_events
             FOR VALUES FROM ('${monthStartIso(month)}') TO ('${monthStartIso(month + 1)}')`,
        );
      }
    });
    for (const month of missing) this.known.add(month);
  }

  /** Runs `work` in a transaction holding the partition lock (two sinks never race on one partition). */
  private async underLock(work: (client: pg.PoolClient) => Promise<unknown>): Promise<void> {
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN');
      await client.query('SELECT pg_advisory_xact_lock($1)', [PARTITION_LOCK]);
      await work(client);
      await client.query('COMMIT');
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw error;
    } finally {
      client.release();
    }
  }

  /** The months that have a partition, oldest first. */
  async list(): Promise<number[]> {
    const { rows } = await this.pool.query<{ name: string }>(
      `SELECT child.relname AS name
         FROM pg_inherits
         JOIN pg_class child ON child.oid = pg_inherits.inhrelid
         JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
         JOIN pg_namespace ns ON ns.oid = parent.relnamespace
        WHERE parent.relname = 'usage_events' AND ns.nspname = current_schema()`,
    );
    return rows
      .map((row) => monthOfName(row.name))
      .filter((month): month is number => month !== undefined)
      .sort((a, b) => a - b);
  }

  /** Drops the partitions whose whole month ended before `cutoffMs`; returns their names. */
  async dropEndedBefore(cutoffMs: number): Promise<string[]> {
    const dropped: string[] = [];
    for (const month of await this.list()) {
      if (Date.parse(monthStartIso(month + 1)) > cutoffMs) break;
      await this.underLock((client) => client.query(`DROP TABLE IF EXISTS ${partitionName(month)}`));
      this.known.delete(month);
      dropped.push(partitionName(month));
    }
    return dropped;
  }
}
