/** Byte sizes as people write them (4096, 4K, 4KiB, 1M, 256MiB) and as tables print them. */
import { HmmlabError } from '../errors.ts';

const UNITS: Record<string, number> = { '': 1, k: 1 << 10, m: 1 << 20, g: 1 << 30 };

/** Parse one size; K/M/G (with or without "iB" or "B") are binary multiples. */
export function parseSize(text: string): number {
  const m = /^\s*(\d+)\s*([kmg]?)(?:i?b)?\s*$/i.exec(text);
  const n = m ? Number(m[1]) * UNITS[m[2].toLowerCase()] : Number.NaN;
  if (!Number.isSafeInteger(n) || n <= 0) {
    throw new HmmlabError(
      'EINVAL',
      `bad size "${text}": expected a positive byte count such as 4096, 64K or 16MiB`,
    );
  }
  return n;
}

/** Parse a comma-separated list of sizes. */
export function parseSizeList(text: string): number[] {
  const items = text.split(',').filter((s) => s.trim() !== '');
  if (items.length === 0) throw new HmmlabError('EINVAL', `bad size list "${text}": no sizes`);
  return items.map(parseSize);
}

/** 4096 -> "4 KiB", 1048581 -> "1048581 B" (exact sizes stay exact). */
export function formatBytes(n: number): string {
  for (const [unit, k] of [
    ['GiB', 1 << 30],
    ['MiB', 1 << 20],
    ['KiB', 1 << 10],
  ] as const) {
    if (n >= k && n % k === 0) return `${n / k} ${unit}`;
  }
  return `${n} B`;
}
