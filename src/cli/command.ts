import { parseArgs, type ParseArgsConfig } from 'node:util';

/** One CLI command: a file in src/cli/commands/, one line in the table of main.ts. */
export interface Command {
  name: string;
  summary: string;
  /** Full `--help` text: usage, options, an example. */
  help: string;
  /** Returns the process exit code. */
  run(argv: string[]): Promise<number>;
}

/** Thrown for bad command-line input: printed without a stack, exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** `node:util` parseArgs, with its complaints (unknown option, missing value) turned into a UsageError. */
export function parseCommandLine<T extends ParseArgsConfig>(config: T): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (error) {
    throw new UsageError(error instanceof Error ? error.message : String(error));
  }
}

/** A numeric flag: undefined when absent, a UsageError naming the flag when it is not `expected`. */
export function parseNumberFlag(
  flag: string,
  value: string | undefined,
  check: (number: number) => boolean,
  expected: string,
): number | undefined {
  if (value === undefined) return undefined;
  const number = Number(value);
  if (value.trim() === '' || !Number.isFinite(number) || !check(number))
    throw new UsageError(`${flag} must be ${expected}, got "${value}"`);
  return number;
}

/** `--port`: 0-65535 (0: any free port). */
export function parsePortFlag(value: string | undefined): number | undefined {
  return parseNumberFlag(
    '--port',
    value,
    (number) => Number.isInteger(number) && number >= 0 && number <= 65_535,
    'a port number (0-65535)',
  );
}

export const isPositiveInteger = (number: number): boolean => Number.isInteger(number) && number > 0;
