/**
 * Plain-text tables for the CLI's output (`llm-proxy limits`, the `llm-proxy usage` report). Below every
 * other folder and importing nothing, so that the aggregator's report can use it without depending on the CLI.
 */

/**
 * The header and rows as lines of columns two spaces apart, each column as wide as its widest cell, trailing
 * blanks trimmed. Cells are padded on the right, or on the left in the columns `rightAligned` names (numbers).
 */
export function tableLines(
  header: string[],
  rows: string[][],
  rightAligned: (column: number) => boolean = () => false,
): string[] {
  const widths = header.map((title) => title.length);
  for (const row of rows) {
    for (let column = 0; column < widths.length; column++)
      widths[column] = Math.max(widths[column] ?? 0, (row[column] ?? '').length);
  }
  const line = (cells: string[]) =>
    cells
      .map((cell, column) =>
        rightAligned(column) ? cell.padStart(widths[column] ?? 0) : cell.padEnd(widths[column] ?? 0),
      )
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)];
}
