/**
 * Counts and byte sizes as people write them (4096, 4K, 4KiB, 1M, 256MiB) and as tables print them.
 * This is the one parser of the count and size options of every command (replay, bench copy,
 * bench faults), so that they accept the same text and word their errors alike.
 */
import { MAX_PAGE_SIZE, MIN_PAGE_SIZE } from '../device/frames.ts';
import { HmmlabError } from '../errors.ts';
import { MAX_FILE_SIZE_LIMIT } from '../mm/args.ts';

const UNITS: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };

/**
 * The number `text` writes: decimal digits, then an optional K, M, G or T (binary multiples, with
 * or without "iB" or "B"); blanks around are ignored. NaN when it is not one or not a safe integer.
 */
export function numberOf(text: string): number {
  const m = /^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text);
  const n = m ? Number(m[1]) * UNITS[m[2].toLowerCase()] : Number.NaN;
  return Number.isSafeInteger(n) ? n : Number.NaN;
}

/** Parse one size; K/M/G (with or without "iB" or "B") are binary multiples. */
export function parseSize(text: string): number {
  const n = numberOf(text);
  if (!(n > 0)) {
    throw new HmmlabError(
      'EINVAL',
      `bad size "${text}": expected a positive byte count such as 4096, 64K or 16MiB`,
    );
  }
  return n;
}

/**
 * A count option (`--iters 5`, `--host-pages 1K`): `fallback` when not given, else an integer
 * >= `min` (1 unless said), or EINVAL naming the flag.
 */
export function parseCount(flag: string, text: string | undefined, fallback: number, min = 1): number {
  if (text === undefined) return fallback;
  const n = numberOf(text);
  if (!(n >= min)) {
    const what =
      min === 0 ? 'a non-negative integer' : min === 1 ? 'a positive integer' : `an integer >= ${min}`;
    throw new HmmlabError('EINVAL', `bad ${flag} "${text}": expected ${what}`);
  }
  return n;
}

/** `--max-file-size` (replay, stress): a byte count from `min` to MAX_FILE_SIZE_LIMIT (8 TiB), or EINVAL. */
export function parseMaxFileSize(text: string | undefined, fallback: number, min = 1): number {
  const n = parseCount('--max-file-size', text, fallback, min);
  if (n > MAX_FILE_SIZE_LIMIT) {
    throw new HmmlabError('EINVAL', `bad --max-file-size "${text}": at most 8 TiB (8T)`);
  }
  return n;
}

/** `--page-size`: 4096, 64K, 2MiB...; a power of two from 4 KiB to 2 MiB, or EINVAL. */
export function parsePageSize(text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const n = numberOf(text);
  if (!(n >= MIN_PAGE_SIZE && n <= MAX_PAGE_SIZE && (n & (n - 1)) === 0)) {
    throw new HmmlabError(
      'EINVAL',
      `bad --page-size "${text}": expected a power of two from 4096 (4K) to 2097152 (2M)`,
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
    ['TiB', 2 ** 40],
    ['GiB', 2 ** 30],
    ['MiB', 1 << 20],
    ['KiB', 1 << 10],
  ] as const) {
    if (n >= k && n % k === 0) return `${n / k} ${unit}`;
  }
  return `${n} B`;
}

/** "1 page", "2 pages", "1 batch", "3 batches": a count and its noun, in the number it takes. */
export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}
