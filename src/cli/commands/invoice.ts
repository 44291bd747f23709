/**
 * `llm-proxy invoice`: a microDAO's bill for one month, from the PostgreSQL usage log.
 */
import { existsSync } from 'node:fs';
import type { Command } from '../command.js';
import { parseCommandLine, UsageError } from '../command.js';
import { configPathFromEnv, DEFAULT_CONFIG_PATH, loadConfigFile } from '../../config/index.js';
import { POSTGRES_URL_ENV } from '../../config/usage-sink-schema.js';
import {
  checkInvoiceRequest,
  formatInvoiceCsv,
  formatInvoiceTable,
  formatNanoUsd,
  formatNanoUsdCents,
  InvoiceError,
  invoiceFor,
  listPricesOf,
  type Invoice,
} from '../../sink/invoice.js';
import { NO_USAGE_LOG_MESSAGE, parseUsageLogFlags, usageLogConnection, withUsageLog } from './usage.js';

const help = `Usage: llm-proxy invoice --microdao ID --month YYYY-MM [--csv | --json] [--url URL] [--schema NAME] [--config FILE]

A microDAO's bill for one UTC month, from the PostgreSQL usage log that
\`llm-proxy sink postgres\` keeps: one line per model with requests, prompt,
cached-prompt and completion tokens and cost, then the total. Costs are the
requests' own costs (as their usage events carry them), summed exactly: the
total equals the sum of the month's events, to the nano-dollar, and "to pay" is
that total rounded to the cent. With a config, config.yaml's list prices (USD
per 1k tokens) are shown beside each model.

Options:
  --microdao ID   metadata.microdao_id of the requests, e.g. microdao:7
  --month M       the month billed, YYYY-MM (UTC), e.g. 2026-11
  --csv           CSV: one "model" row per line, a "total" row and a "to_pay" row
  --json          the bill as JSON (costs as USD strings with nine decimals)
  --url URL       postgres://user:password@host:5432/database
                  (default: $${POSTGRES_URL_ENV}, else usage_sink.postgres.url in config.yaml)
  --schema NAME   schema of the tables (default: usage_sink.postgres.schema, else public)
  --config PATH   config.yaml for the usage log and the list prices
                  (default: $LLM_PROXY_CONFIG, else ./config.yaml when present)

Errors print "error <message>" (URLs without their password) and exit with code 1.

Examples:
  llm-proxy invoice --microdao microdao:7 --month 2026-11
  llm-proxy invoice --microdao microdao:7 --month 2026-11 --csv > microdao-7-2026-11.csv
  ${POSTGRES_URL_ENV}=postgres://llmproxy@db:5432/llmproxy llm-proxy invoice --microdao microdao:7 --month 2026-11 --json
`;

interface InvoiceArguments {
  microdao: string;
  month: string;
  output: 'table' | 'csv' | 'json';
  url: string | undefined;
  schema: string | undefined;
  configPath: string | undefined;
}

export function parseInvoiceArguments(argv: string[], env: NodeJS.ProcessEnv = process.env): InvoiceArguments {
  const { values } = parseCommandLine({
    args: argv,
    allowPositionals: false,
    strict: true,
    options: {
      microdao: { type: 'string' },
      month: { type: 'string' },
      csv: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      url: { type: 'string' },
      schema: { type: 'string' },
      config: { type: 'string' },
    },
  });
  if (values.microdao === undefined) throw new UsageError('--microdao is required (e.g. --microdao microdao:7)');
  if (values.month === undefined) throw new UsageError('--month is required (e.g. --month 2026-11)');
  if (values.csv && values.json) throw new UsageError('choose one of --csv and --json');
  try {
    checkInvoiceRequest({ microdao: values.microdao, month: values.month });
  } catch (error) {
    if (error instanceof InvoiceError) throw new UsageError(error.message);
    throw error;
  }
  const flags = parseUsageLogFlags(values.url, values.schema);
  const configPath =
    values.config ?? (env.LLM_PROXY_CONFIG || (existsSync(DEFAULT_CONFIG_PATH) ? configPathFromEnv(env) : undefined));
  return {
    microdao: values.microdao,
    month: values.month,
    output: values.csv ? 'csv' : values.json ? 'json' : 'table',
    url: flags.url,
    schema: flags.schema,
    configPath,
  };
}

/** The bill as JSON: numbers as numbers, money as exact USD strings. */
export function invoiceJson(invoice: Invoice): string {
  const { lines, total_nanousd, ...rest } = invoice;
  return `${JSON.stringify(
    {
      ...rest,
      lines: lines.map(({ cost_nanousd, ...line }) => ({ ...line, cost_usd: formatNanoUsd(cost_nanousd) })),
      total_usd: formatNanoUsd(total_nanousd),
      to_pay_usd: formatNanoUsdCents(total_nanousd),
    },
    null,
    2,
  )}\n`;
}

async function run(argv: string[]): Promise<number> {
  const parsed = parseInvoiceArguments(argv);
  const config = parsed.configPath === undefined ? undefined : loadConfigFile(parsed.configPath);
  const connection = usageLogConnection(
    {
      ...(parsed.url === undefined ? {} : { url: parsed.url }),
      ...(parsed.schema === undefined ? {} : { schema: parsed.schema }),
    },
    config,
  );
  if (connection === undefined) {
    process.stderr.write(`${NO_USAGE_LOG_MESSAGE}\n`);
    return 1;
  }
  const invoice = await withUsageLog(
    connection,
    (pool) => invoiceFor(pool, { microdao: parsed.microdao, month: parsed.month }),
    'llm-proxy-invoice',
  );
  if (invoice === undefined) return 1;
  const prices = config === undefined ? undefined : listPricesOf(config);
  if (parsed.output === 'csv') process.stdout.write(formatInvoiceCsv(invoice, prices));
  else if (parsed.output === 'json') process.stdout.write(invoiceJson(invoice));
  else process.stdout.write(formatInvoiceTable(invoice, prices));
  return 0;
}

export const command: Command = {
  name: 'invoice',
  summary: "a microDAO's monthly bill from the PostgreSQL usage log (table, CSV or JSON)",
  help,
  run,
};
