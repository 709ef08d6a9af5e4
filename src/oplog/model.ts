/**
 * The reference model of docs/oplog.md: the file as a list of runs, every op applied by its rule
 * and nothing else (no pages, no cache, no device). Replay --check and the fsx-style tests compare
 * hmmlab against it.
 *
 * Every byte an op log writes is its op's pattern, (x + 7 * tag) mod 251, so the file is exactly
 * the runs of bytes each op left, [start, end) with its tag, in file order, and zeros between them.
 * The model keeps those runs and computes bytes on demand (readInto), so a log over gigabytes is a
 * few runs per op, not a byte array as large as the file; reads and disk images are compared a
 * chunk at a time. Adjacent runs of one tag join: an op's pattern continues across them.
 */
import { eofError, sizeAfter } from './eof.ts';
import { oplogError } from './parse.ts';
import { fillPattern, PATTERN_MODULUS } from './pattern.ts';
import type { Op } from './schema.ts';

/** Bytes [start, end) of the file hold the pattern of `tag` (reduced mod 251: the pattern's period). */
interface Run {
  start: number;
  end: number;
  tag: number;
}

export class OplogModel {
  /** Disjoint, ascending, none empty; gaps are zeros. Runs never reach past `size`. */
  private runs: Run[] = [];
  size = 0;

  /** Runs the model holds (its memory is this, whatever the file size). */
  get runCount(): number {
    return this.runs.length;
  }

  /** The whole file as the model has it (a new array: for small files). */
  bytes(): Uint8Array {
    return this.readInto(new Uint8Array(this.size), 0);
  }

  /**
   * Apply one op. Returns the bytes a read-like op returns (a copy), null for other ops.
   * `line` names the op in errors (a device op past EOF).
   */
  apply(op: Op, line = 0): Uint8Array | null {
    const past = eofError(op, this.size);
    if (past) throw oplogError(line, past);
    switch (op.op) {
      case 'write':
      case 'mapwrite':
      case 'diowrite':
      case 'devwrite':
        if (op.len > 0) this.set(op.off, op.off + op.len, op.tag % PATTERN_MODULUS);
        break;
      case 'read':
      case 'mapread':
      case 'dioread':
      case 'devread':
        return this.read(op.off, op.len);
      case 'truncate':
        if (op.size < this.size) this.set(op.size, this.size, null);
        break;
      case 'punch': {
        const end = Math.min(op.off + op.len, this.size);
        if (op.off < end) this.set(op.off, end, null);
        break;
      }
      case 'fsync':
      case 'dropcaches':
      case 'remount':
        break;
    }
    this.size = sizeAfter(op, this.size);
    return null;
  }

  /**
   * An op that failed as its log expected (`expect`): of its data, only the file ranges `landed`
   * were stored (expect.ts says which), and the size moves as eof.ts's sizeAfter(op, size, true)
   * (a failed mapwrite had extended the file first). A read-like op that failed returns nothing.
   */
  applyFailed(op: Op, landed: readonly (readonly [number, number])[]): void {
    const size = sizeAfter(op, this.size, true);
    if ('tag' in op) {
      for (const [from, to] of landed) {
        if (from < 0 || to > size || from > to)
          throw new RangeError(`landed range [${from}, ${to}) past EOF ${size}`);
        if (to > from) this.set(from, to, op.tag % PATTERN_MODULUS);
      }
    }
    this.size = size;
  }

  /** Bytes [off, off+len) clamped to EOF: short at EOF, empty past it. */
  read(off: number, len: number): Uint8Array {
    return this.readInto(new Uint8Array(this.readLength(off, len)), off);
  }

  /** How many bytes a read of [off, off+len) returns: clamped to EOF. */
  readLength(off: number, len: number): number {
    return Math.max(0, Math.min(off + len, this.size) - off);
  }

  /** Fill `dst` with the file's bytes from offset `off` (zeros past EOF); returns dst. */
  readInto(dst: Uint8Array, off: number): Uint8Array {
    dst.fill(0);
    const end = off + dst.length;
    for (let i = this.firstEndingAfter(off); i < this.runs.length && this.runs[i].start < end; i++) {
      const r = this.runs[i];
      const a = Math.max(off, r.start);
      const b = Math.min(end, r.end);
      fillPattern(dst.subarray(a - off, b - off), a, r.tag);
    }
    return dst;
  }

  /** Index of the first run whose end is past `x` (binary search). */
  private firstEndingAfter(x: number): number {
    let lo = 0;
    let hi = this.runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.runs[mid].end <= x) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Make [start, end) the pattern of `tag`, or zeros (null): cut the runs it covers, join neighbours. */
  private set(start: number, end: number, tag: number | null): void {
    const i = this.firstEndingAfter(start);
    let j = i;
    while (j < this.runs.length && this.runs[j].start < end) j++;
    const put: Run[] = [];
    if (i < j && this.runs[i].start < start) put.push({ ...this.runs[i], end: start });
    if (tag !== null) put.push({ start, end, tag });
    if (i < j && this.runs[j - 1].end > end) put.push({ ...this.runs[j - 1], start: end });
    this.runs.splice(i, j - i, ...put);
    // Join touching runs of one tag around what changed.
    for (let k = Math.max(1, i); k < Math.min(this.runs.length, i + put.length + 1); k++) {
      const a = this.runs[k - 1];
      const b = this.runs[k];
      if (a.end === b.start && a.tag === b.tag) {
        a.end = b.end;
        this.runs.splice(k, 1);
        k--;
      }
    }
  }
}

/** Run a whole log (one without `expect`) through the model: the bytes of each read-like op (null for others) and the file. */
export function modelOplog(
  ops: readonly Op[],
  lines?: readonly number[],
): { reads: (Uint8Array | null)[]; file: Uint8Array } {
  const m = new OplogModel();
  const reads = ops.map((op, k) => m.apply(op, lines?.[k] ?? k + 1));
  return { reads, file: m.bytes() };
}
