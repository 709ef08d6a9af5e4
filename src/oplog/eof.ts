/**
 * How each op moves EOF, and the one rule that depends on it (device ops lie within EOF). The size
 * of the file after any prefix of a log follows from the log alone, so the parser checks this rule
 * for the whole log before replay touches the disk, and the model applies the same function.
 */
import { isDeviceOp, type Op } from './schema.ts';

/** i_size after `op`, given i_size before it (docs/oplog.md's rules; a zero-length write changes nothing). */
export function sizeAfter(op: Op, size: number): number {
  switch (op.op) {
    case 'write':
    case 'mapwrite': // extends the file to off+len first, as fsx does
    case 'diowrite':
      return op.len > 0 ? Math.max(size, op.off + op.len) : size;
    case 'truncate':
      return op.size;
    default:
      return size;
  }
}

/** null when `op` keeps the EOF rule at file size `size`, else the reason. */
export function eofError(op: Op, size: number): string | null {
  if (!isDeviceOp(op)) return null;
  if (op.off + op.len > size) {
    return `${op.op}: range [${op.off}, ${op.off + op.len}) is past EOF (file size ${size})`;
  }
  return null;
}
