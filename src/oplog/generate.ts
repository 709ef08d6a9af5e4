/**
 * A seeded generator of valid op logs (as fsx picks its operations): the same options and seed give
 * the same log. Offsets mix page-aligned, sector-aligned, word-aligned and arbitrary values, ranges
 * that straddle page boundaries and EOF, and reads past EOF; writes stay below `maxFileSize`.
 * Device ops are off by default. `legalizeOplog` makes any op
 * sequence valid (clamps device ops into EOF), for fast-check arbitraries that shrink freely.
 */
import { uniformInt } from 'pure-rand/distribution/uniformInt';
import { xoroshiro128plus } from 'pure-rand/generator/xoroshiro128plus';
import { HmmlabError } from '../errors.ts';
import { eofError, sizeAfter } from './eof.ts';
import type { Op, OpName } from './schema.ts';

export interface GenerateOptions {
  seed: number;
  /** Number of ops (default 1000). */
  ops?: number;
  /** Writes, truncates and direct I/O stay within this size (default 256 KiB). */
  maxFileSize?: number;
  /** The page size that "page-aligned" offsets and straddling ranges use (default 4096). */
  pageSize?: number;
  /** Longest single op (default 3 pages, at most maxFileSize). */
  maxLen?: number;
  /** Relative weight of each op (0 removes it); missing names take DEFAULT_WEIGHTS. */
  weights?: Partial<Record<OpName, number>>;
  /** Include devread/devwrite (default false). */
  device?: boolean;
}

/** fsx-like mix: data ops dominate, the big hammers (remount, dropcaches) are rare. */
export const DEFAULT_WEIGHTS: Record<OpName, number> = {
  write: 20,
  read: 20,
  mapwrite: 10,
  mapread: 10,
  devwrite: 10,
  devread: 10,
  diowrite: 5,
  dioread: 5,
  truncate: 5,
  punch: 5,
  fsync: 3,
  dropcaches: 2,
  remount: 1,
};

/** Seeds are what the generator takes whole: 0 .. 2^31-1. */
export const SEED_LIMIT = 0x80000000;

type Rng = ReturnType<typeof xoroshiro128plus>;

function positiveInt(name: string, v: number, min = 1): number {
  if (!Number.isSafeInteger(v) || v < min) {
    throw new HmmlabError('EINVAL', `generator: ${name} must be an integer >= ${min}, got ${v}`);
  }
  return v;
}

const alignDown = (x: number, a: number) => x - (x % a);

export function generateOplog(options: GenerateOptions): Op[] {
  const count = positiveInt('ops', options.ops ?? 1000, 0);
  const maxFileSize = positiveInt('maxFileSize', options.maxFileSize ?? 256 * 1024, 512);
  const pageSize = positiveInt('pageSize', options.pageSize ?? 4096);
  const maxLen = Math.min(maxFileSize, positiveInt('maxLen', options.maxLen ?? 3 * pageSize));
  const weights = { ...DEFAULT_WEIGHTS, ...options.weights };
  if (!options.device) weights.devread = weights.devwrite = 0;
  const names = (Object.keys(weights) as OpName[]).filter((n) => weights[n] > 0);
  const total = names.reduce((s, n) => s + weights[n], 0);
  if (total <= 0) throw new HmmlabError('EINVAL', 'generator: every op weight is zero');

  const rng: Rng = xoroshiro128plus(options.seed | 0);
  const int = (lo: number, hi: number) => (hi <= lo ? lo : uniformInt(rng, lo, hi));
  const pick = (): OpName => {
    let r = int(0, total - 1);
    for (const n of names) {
      r -= weights[n];
      if (r < 0) return n;
    }
    return names[names.length - 1];
  };

  /** An offset for an op on a file of `size` bytes, `limit` the largest allowed. */
  const offset = (size: number, limit: number): number => {
    let x: number;
    switch (int(0, 7)) {
      case 0:
      case 1:
        x = int(0, limit);
        break;
      case 2: // page-aligned
        x = alignDown(int(0, limit), pageSize);
        break;
      case 3: // just around a page boundary: ranges straddle pages
        x = alignDown(int(0, limit), pageSize) + int(-16, 16);
        break;
      case 4: // around EOF
        x = size + int(-64, 64);
        break;
      case 5: // sector-aligned
        x = alignDown(int(0, limit), 512);
        break;
      case 6: // word-aligned
        x = alignDown(int(0, limit), 4);
        break;
      default: // past EOF (reads: empty; writes: a gap of zeros)
        x = int(size, limit);
    }
    return Math.max(0, Math.min(x, limit));
  };
  const length = (): number => {
    switch (int(0, 5)) {
      case 0:
        return int(0, 16);
      case 1:
        return int(1, 512);
      case 2:
        return pageSize;
      default:
        return int(1, maxLen);
    }
  };
  /** A range [off, off+len) with off+len <= limit, aligned to `a`. */
  const range = (size: number, limit: number, a: number): { off: number; len: number } => {
    const off = alignDown(offset(size, limit), a);
    const len = alignDown(Math.min(length(), limit - off), a);
    return { off, len };
  };

  const ops: Op[] = [];
  let size = 0;
  let tag = 0;
  while (ops.length < count) {
    const name = pick();
    let op: Op | null = null;
    switch (name) {
      case 'write':
      case 'mapwrite':
        op = { op: name, ...range(size, maxFileSize, 1), tag: ++tag };
        break;
      case 'diowrite':
        op = { op: name, ...range(size, alignDown(maxFileSize, 512), 512), tag: ++tag };
        break;
      case 'devwrite': {
        const limit = alignDown(size, 4);
        if (limit > 0) op = { op: name, ...range(size, limit, 4), tag: ++tag };
        break;
      }
      case 'devread': {
        const limit = alignDown(size, 4);
        if (limit > 0) op = { op: name, ...range(size, limit, 4) };
        break;
      }
      case 'read':
      case 'mapread':
      case 'punch':
        // May start or end past EOF: short reads, empty reads, clamped punches.
        op = { op: name, off: offset(size, maxFileSize + pageSize), len: length() };
        break;
      case 'dioread':
        op = { op: name, ...range(size, alignDown(maxFileSize + pageSize, 512), 512) };
        break;
      case 'truncate': {
        const k = int(0, 3);
        const s =
          k === 0
            ? alignDown(int(0, maxFileSize), pageSize)
            : k === 1
              ? size + int(-600, 600)
              : int(0, maxFileSize);
        op = { op: name, size: Math.max(0, Math.min(s, maxFileSize)) };
        break;
      }
      case 'fsync':
      case 'dropcaches':
      case 'remount':
        op = { op: name };
        break;
    }
    if (!op) continue; // a device op on a file too small for one word: pick again
    size = sizeAfter(op, size);
    ops.push(op);
  }
  return ops;
}

/**
 * Make any op sequence valid: a device op past EOF is clamped to the words that lie within EOF
 * (dropped when none do). Alignment is the caller's to keep; this fixes only what depends on the
 * ops before (so a shrinking property test can drop any op and still replay a valid log).
 */
export function legalizeOplog(ops: readonly Op[]): Op[] {
  const out: Op[] = [];
  let size = 0;
  for (const op of ops) {
    let o: Op | null = op;
    if ((o.op === 'devread' || o.op === 'devwrite') && eofError(o, size)) {
      const limit = alignDown(size, 4);
      const off = Math.min(o.off, limit);
      const len = Math.min(o.len, limit - off);
      o = len > 0 ? { ...o, off, len } : null;
    }
    if (!o) continue;
    size = sizeAfter(o, size);
    out.push(o);
  }
  return out;
}
