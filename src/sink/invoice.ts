import type pg from 'pg';
import { compareValues, NONE_LABEL } from '../aggregator/query.js';
import type { ResolvedConfig } from '../config/index.js';
import { tableLines } from '../format/table.js';

/**
 * A microDAO's bill for one UTC month, from the PostgreSQL usage log: one line per logical model with
 * its requests, tokens and cost, and the total. Costs are the events' own costs, summed exactly in
 * nano-dollars (never recomputed from prices): the total is the sum of the lines, and the sum of the
 * events. List prices from config.yaml are shown beside the lines, for reading, when a config is loaded.
 */

export class InvoiceError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InvoiceError';
  }
}

export interface InvoiceRequest {
  /** `microdao_id` of the events, e.g. `microdao:7`. */
  microdao: string;
  /** `YYYY-MM`: the UTC month billed. */
  month: string;
}

export interface InvoiceLine {
  /** The logical model (null: events without one, printed as "(none)"). */
  model: string | null;
  requests: number;
  prompt_tokens: number;
  cached_prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** The sum of the events' costs, in nano-dollars. */
  cost_nanousd: bigint;
}

export interface Invoice {
  microdao: string;
  month: string;
  /** First instant billed (UTC midnight of the month's first day), ISO 8601. */
  period_start: string;
  /** First instant not billed: the next month's first day. */
  period_end: string;
  /** By model name (the events without a model under "(none)"). */
  lines: InvoiceLine[];
  requests: number;
  prompt_tokens: number;
  cached_prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** The sum of the lines' costs, in nano-dollars. */
  total_nanousd: bigint;
}

/** List prices of a model, USD per 1k tokens (as config.yaml has them). */
export interface ListPrice {
  prompt: number;
  completion: number;
  /** The price of cached prompt tokens (the prompt price when config.yaml sets none). */
  cached_prompt: number;
}

const MONTH = /^(\d{4})-(\d{2})$/;

/** `YYYY-MM` → the month's UTC range [first day 00:00, next month's first day). */
export function monthRange(month: string): { start: Date; end: Date } {
  const match = MONTH.exec(month);
  const year = Number(match?.[1]);
  const index = Number(match?.[2]) - 1;
  if (match === null || index < 0 || index > 11 || year < 1970)
    throw new InvoiceError(`--month must be a month as YYYY-MM (e.g. 2026-11), not ${JSON.stringify(month)}`);
  return { start: new Date(Date.UTC(year, index, 1)), end: new Date(Date.UTC(year, index + 1, 1)) };
}

/** Checks a request: a microDAO id that is not blank, a month as YYYY-MM. */
export function checkInvoiceRequest(request: InvoiceRequest): { start: Date; end: Date } {
  if (request.microdao.trim() === '')
    throw new InvoiceError('--microdao must name a microDAO (its microdao_id, e.g. microdao:7)');
  return monthRange(request.month);
}

type LineRow = Record<
  | 'model'
  | 'requests'
  | 'prompt_tokens'
  | 'cached_prompt_tokens'
  | 'completion_tokens'
  | 'total_tokens'
  | 'cost_nanousd',
  string | null
>;

/** The bill of `request.microdao` for `request.month`, from `usage_hourly` (the hours of the month, UTC). */
export async function invoiceFor(pool: Pick<pg.Pool, 'query'>, request: InvoiceRequest): Promise<Invoice> {
  const { start, end } = checkInvoiceRequest(request);
  const { rows } = await pool.query<LineRow>({
    text: `SELECT model,
                  sum(requests)::text AS requests,
                  sum(prompt_tokens)::text AS prompt_tokens,
                  sum(cached_prompt_tokens)::text AS cached_prompt_tokens,
                  sum(completion_tokens)::text AS completion_tokens,
                  sum(total_tokens)::text AS total_tokens,
                  (sum(cost_usd) * 1000000000)::bigint::text AS cost_nanousd
             FROM usage_hourly
            WHERE microdao_id = $1 AND hour >= $2::timestamptz AND hour < $3::timestamptz
            GROUP BY model`,
    values: [request.microdao, start.toISOString(), end.toISOString()],
  });
  const lines: InvoiceLine[] = rows.map((row) => ({
    model: row.model,
    requests: Number(row.requests ?? 0),
    prompt_tokens: Number(row.prompt_tokens ?? 0),
    cached_prompt_tokens: Number(row.cached_prompt_tokens ?? 0),
    completion_tokens: Number(row.completion_tokens ?? 0),
    total_tokens: Number(row.total_tokens ?? 0),
    cost_nanousd: BigInt(row.cost_nanousd ?? '0'),
  }));
  lines.sort((left, right) => compareValues([left.model ?? NONE_LABEL], [right.model ?? NONE_LABEL]));
  const sum = (pick: (line: InvoiceLine) => number) => lines.reduce((total, line) => total + pick(line), 0);
  return {
    microdao: request.microdao,
    month: request.month,
    period_start: start.toISOString(),
    period_end: end.toISOString(),
    lines,
    requests: sum((line) => line.requests),
    prompt_tokens: sum((line) => line.prompt_tokens),
    cached_prompt_tokens: sum((line) => line.cached_prompt_tokens),
    completion_tokens: sum((line) => line.completion_tokens),
    total_tokens: sum((line) => line.total_tokens),
    total_nanousd: lines.reduce((total, line) => total + line.cost_nanousd, 0n),
  };
}

/** The list prices of the models of a config. */
export function listPricesOf(config: Pick<ResolvedConfig, 'models'>): Map<string, ListPrice> {
  const prices = new Map<string, ListPrice>();
  for (const [name, model] of config.models) {
    prices.set(name, {
      prompt: model.cost_per_1k_prompt,
      completion: model.cost_per_1k_completion,
      cached_prompt: model.cost_per_1k_cached_prompt ?? model.cost_per_1k_prompt,
    });
  }
  return prices;
}

/** Nano-dollars as USD with nine decimals, exactly (`12.345678901`). */
export function formatNanoUsd(nano: bigint): string {
  const negative = nano < 0n;
  const digits = (negative ? -nano : nano).toString().padStart(10, '0');
  return `${negative ? '-' : ''}${digits.slice(0, -9)}.${digits.slice(-9)}`;
}

/** Nano-dollars rounded to the cent (half up), as USD with two decimals (`12.35`). */
export function formatNanoUsdCents(nano: bigint): string {
  const negative = nano < 0n;
  const cents = ((negative ? -nano : nano) + 5_000_000n) / 10_000_000n;
  const digits = cents.toString().padStart(3, '0');
  return `${negative ? '-' : ''}${digits.slice(0, -2)}.${digits.slice(-2)}`;
}

const integer = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const NO_PRICE = '—';

/** A list price in plain decimals (`0.00027`, never `2.7e-4`), to the nano-dollar. */
export function formatPrice(price: number): string {
  const text = price.toFixed(9).replace(/0+$/, '');
  return text.endsWith('.') ? text.slice(0, -1) : text;
}

const modelLabel = (line: InvoiceLine): string => line.model ?? NONE_LABEL;

function priceOf(line: InvoiceLine, prices: ReadonlyMap<string, ListPrice> | undefined): ListPrice | undefined {
  return line.model === null ? undefined : prices?.get(line.model);
}

/**
 * The bill as text: a header, a table of lines (with the list prices when `prices` is given: a config
 * was loaded; "—" for a model it does not have), the total to the nano-dollar and rounded to the cent.
 */
export function formatInvoiceTable(invoice: Invoice, prices?: ReadonlyMap<string, ListPrice>): string {
  const lines = [
    `Invoice for ${invoice.microdao}, ${invoice.month}`,
    `  period  ${invoice.period_start} to ${invoice.period_end} (UTC, end excluded)`,
    '',
  ];
  if (invoice.lines.length === 0) {
    lines.push('  (no requests in this month)', '');
  } else {
    const withPrices = prices !== undefined;
    const header = [
      'MODEL',
      'REQUESTS',
      'PROMPT',
      'CACHED PROMPT',
      'COMPLETION',
      'TOTAL TOKENS',
      ...(withPrices ? ['$/1K PROMPT', '$/1K CACHED', '$/1K COMPLETION'] : []),
      'COST USD',
    ];
    const price = (line: InvoiceLine, pick: (price: ListPrice) => number): string => {
      const listed = priceOf(line, prices);
      return listed === undefined ? NO_PRICE : formatPrice(pick(listed));
    };
    const rows = invoice.lines.map((line) => [
      modelLabel(line),
      integer.format(line.requests),
      integer.format(line.prompt_tokens),
      integer.format(line.cached_prompt_tokens),
      integer.format(line.completion_tokens),
      integer.format(line.total_tokens),
      ...(withPrices
        ? [
            price(line, (listed) => listed.prompt),
            price(line, (listed) => listed.cached_prompt),
            price(line, (listed) => listed.completion),
          ]
        : []),
      formatNanoUsd(line.cost_nanousd),
    ]);
    rows.push([
      'total',
      integer.format(invoice.requests),
      integer.format(invoice.prompt_tokens),
      integer.format(invoice.cached_prompt_tokens),
      integer.format(invoice.completion_tokens),
      integer.format(invoice.total_tokens),
      ...(withPrices ? ['', '', ''] : []),
      formatNanoUsd(invoice.total_nanousd),
    ]);
    const table = tableLines(header, rows, (column) => column >= 1).map((line) => `  ${line}`);
    // A rule above the total row.
    const width = Math.max(...table.map((line) => line.length));
    table.splice(table.length - 1, 0, `  ${'-'.repeat(width - 2)}`);
    lines.push(...table, '');
  }
  lines.push(
    `  total   ${formatNanoUsd(invoice.total_nanousd)} USD (the sum of the requests' costs)`,
    `  to pay  $${formatNanoUsdCents(invoice.total_nanousd)} (rounded to the cent)`,
  );
  if (prices !== undefined && invoice.lines.length > 0)
    lines.push('', "  List prices (USD per 1k tokens) are config.yaml's today; the costs are those of the requests.");
  return `${lines.join('\n')}\n`;
}

function csvCell(value: string): string {
  // A model such as "=HYPERLINK(…)" must not become a formula when the bill is opened in a spreadsheet.
  const safe = /^[=+\-@\t\r]/.test(value) ? `'${value}` : value;
  return /[",\r\n]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

export const INVOICE_CSV_COLUMNS = [
  'line',
  'microdao',
  'month',
  'model',
  'requests',
  'prompt_tokens',
  'cached_prompt_tokens',
  'completion_tokens',
  'total_tokens',
  'list_usd_per_1k_prompt',
  'list_usd_per_1k_cached_prompt',
  'list_usd_per_1k_completion',
  'cost_usd',
] as const;

/**
 * The bill as CSV: a `model` row per line, then a `total` row (cost to nine decimals) and a `to_pay` row
 * (cost rounded to the cent). List prices are empty when no config is loaded or it lacks the model.
 */
export function formatInvoiceCsv(invoice: Invoice, prices?: ReadonlyMap<string, ListPrice>): string {
  const rows: string[][] = [[...INVOICE_CSV_COLUMNS]];
  const head = (line: string) => [line, csvCell(invoice.microdao), invoice.month];
  for (const line of invoice.lines) {
    const listed = priceOf(line, prices);
    rows.push([
      ...head('model'),
      csvCell(modelLabel(line)),
      String(line.requests),
      String(line.prompt_tokens),
      String(line.cached_prompt_tokens),
      String(line.completion_tokens),
      String(line.total_tokens),
      listed === undefined ? '' : formatPrice(listed.prompt),
      listed === undefined ? '' : formatPrice(listed.cached_prompt),
      listed === undefined ? '' : formatPrice(listed.completion),
      formatNanoUsd(line.cost_nanousd),
    ]);
  }
  rows.push([
    ...head('total'),
    '',
    String(invoice.requests),
    String(invoice.prompt_tokens),
    String(invoice.cached_prompt_tokens),
    String(invoice.completion_tokens),
    String(invoice.total_tokens),
    '',
    '',
    '',
    formatNanoUsd(invoice.total_nanousd),
  ]);
  rows.push([...head('to_pay'), '', '', '', '', '', '', '', '', '', formatNanoUsdCents(invoice.total_nanousd)]);
  return `${rows.map((row) => row.join(',')).join('\n')}\n`;
}
