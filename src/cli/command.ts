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
