/**
 * An incremental parser for newline-delimited JSON (Ollama's streams): text
 * goes in as it arrives, in pieces of any size, and the values of complete
 * lines come out. Blank lines are skipped and `\r\n` is accepted; a line that
 * is not JSON throws `NdjsonSyntaxError`.
 */
export class NdjsonSyntaxError extends Error {
  constructor(readonly line: string) {
    super(`not a JSON line: ${line.length > 80 ? `${line.slice(0, 80)}…` : line}`);
    this.name = 'NdjsonSyntaxError';
  }
}

function parseLine(raw: string): { value: unknown } | undefined {
  const line = raw.trim();
  if (line === '') return undefined;
  try {
    return { value: JSON.parse(line) as unknown };
  } catch {
    throw new NdjsonSyntaxError(line);
  }
}

export class NdjsonParser {
  private buffer = '';

  /**
   * Feeds a piece of the stream; yields the values of the lines it completed, one by one, so that
   * the lines before a bad one are delivered before the error is thrown.
   */
  *push(text: string): Generator<unknown> {
    this.buffer += text;
    let newline = this.buffer.indexOf('\n');
    while (newline !== -1) {
      const line = this.buffer.slice(0, newline);
      this.buffer = this.buffer.slice(newline + 1);
      const parsed = parseLine(line);
      if (parsed !== undefined) yield parsed.value;
      newline = this.buffer.indexOf('\n');
    }
  }

  /** The stream has ended: a last line without a newline still counts. */
  finish(): unknown[] {
    const parsed = parseLine(this.buffer);
    this.buffer = '';
    return parsed === undefined ? [] : [parsed.value];
  }
}
