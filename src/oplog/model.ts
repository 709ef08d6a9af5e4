/**
 * The reference model of docs/oplog.md: the file as a plain growable byte array, every op applied by
 * its rule and nothing else (no pages, no cache, no device). Replay --check and the fsx-style test
 * compare hmmlab against it. Bytes past `size` in the array are kept zero, so growing the file
 * (write past EOF, truncate up) reads zeros without extra work.
 */
import { eofError, sizeAfter } from './eof.ts';
import { oplogError } from './parse.ts';
import { fillPattern } from './pattern.ts';
import type { Op } from './schema.ts';

const EMPTY = new Uint8Array(0);

export class OplogModel {
  private buf = new Uint8Array(0);
  size = 0;

  /** The whole file as the model has it (a view; valid until the next op). */
  bytes(): Uint8Array {
    return this.buf.subarray(0, this.size);
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
        if (op.len > 0) {
          this.reserve(op.off + op.len);
          fillPattern(this.buf.subarray(op.off, op.off + op.len), op.off, op.tag);
        }
        break;
      case 'read':
      case 'mapread':
      case 'dioread':
      case 'devread':
        return this.read(op.off, op.len);
      case 'truncate':
        if (op.size < this.size) this.buf.fill(0, op.size, this.size);
        else this.reserve(op.size);
        break;
      case 'punch': {
        const end = Math.min(op.off + op.len, this.size);
        if (op.off < end) this.buf.fill(0, op.off, end);
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
      this.reserve(size);
      for (const [from, to] of landed) {
        if (from < 0 || to > size || from > to)
          throw new RangeError(`landed range [${from}, ${to}) past EOF ${size}`);
        fillPattern(this.buf.subarray(from, to), from, op.tag);
      }
    }
    this.size = size;
  }

  /** Bytes [off, off+len) clamped to EOF: short at EOF, empty past it. */
  read(off: number, len: number): Uint8Array {
    if (off >= this.size) return EMPTY;
    return this.buf.slice(off, Math.min(off + len, this.size));
  }

  /** Grow the array (zero-filled) to hold `n` bytes; doubling keeps appends cheap. */
  private reserve(n: number): void {
    if (n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(n, Math.min(this.buf.length * 2, n + (64 << 20))));
    next.set(this.buf.subarray(0, this.size));
    this.buf = next;
  }
}

/** Run a whole log (one without `expect`) through the model: the bytes of each read-like op (null for others) and the file. */
export function modelOplog(
  ops: readonly Op[],
  lines?: readonly number[],
): { reads: (Uint8Array | null)[]; file: Uint8Array } {
  const m = new OplogModel();
  const reads = ops.map((op, k) => m.apply(op, lines?.[k] ?? k + 1));
  return { reads, file: m.bytes().slice() };
}
