/** The benchmarks' terminal tables: each column as wide as its widest cell, two spaces apart. */
export function formatTable(
  head: readonly string[],
  body: readonly (readonly string[])[],
  left: (column: number) => boolean,
): string {
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (left(i) ? c.padEnd(widths[i]) : c.padStart(widths[i])))
      .join('  ')
      .trimEnd();
  return `${[line(head), ...body.map(line)].join('\n')}\n`;
}
