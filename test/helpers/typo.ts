/** The text with its last character changed to a different one (a typo that is never the text itself). */
export function withTypo(text: string): string {
  return `${text.slice(0, -1)}${text.endsWith('x') ? 'y' : 'x'}`;
}
