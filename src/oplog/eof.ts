/**
 * How each op moves EOF, and the rules that depend on it or on the file-size limit: device ops lie
 * within EOF; no op ends past the limit (EFBIG) unless it says `"expect":"EFBIG"`. The size of the
 * file after any prefix of a log follows from the log alone (an op with `expect` is taken to fail
 * as it says; if it does not, the run stops there), so the parser checks these rules for the whole
 * log before replay touches the disk, and the model applies the same function.
 */
import type { HmmlabError } from '../errors.ts';
import { checkFileLimit, DEFAULT_MAX_FILE_SIZE } from '../mm/args.ts';
import { isDeviceOp, type Op } from './schema.ts';

/** The file-size limit of a mount (HmmFs.mount's default maxFileSize): EFBIG past it. */
export const DEFAULT_FILE_SIZE_LIMIT = DEFAULT_MAX_FILE_SIZE;

/**
 * i_size after `op`, given i_size before it (docs/oplog.md's rules; a zero-length write changes
 * nothing). `failed`: the op failed as its `expect` said. A failed write(2) or direct write changed
 * nothing (its blocks are reserved before any byte lands, EFBIG is checked before that); a failed
 * mapwrite had extended the file to off+len first, unless it failed with EFBIG (checked before).
 */
export function sizeAfter(op: Op, size: number, failed = false): number {
  switch (op.op) {
    case 'write':
    case 'diowrite':
      return op.len > 0 && !failed ? Math.max(size, op.off + op.len) : size;
    case 'mapwrite': // extends the file to off+len first, as fsx does
      return op.len > 0 && !(failed && op.expect === 'EFBIG') ? Math.max(size, op.off + op.len) : size;
    case 'truncate':
      return failed ? size : op.size;
    default:
      return size;
  }
}

/** The size of the file after each op of a log in turn, the expected failures taken as said. */
export function sizeAfterLogged(op: Op, size: number): number {
  return sizeAfter(op, size, op.expect !== undefined);
}

/** null when `op` keeps the EOF rule at file size `size`, else the reason. */
export function eofError(op: Op, size: number): string | null {
  if (!isDeviceOp(op)) return null;
  if (op.off + op.len > size) {
    return `${op.op}: range [${op.off}, ${op.off + op.len}) is past EOF (file size ${size})`;
  }
  return null;
}

/**
 * The EFBIG that the filesystem would raise for `op` (an op that stores past `limit` bytes, or a
 * truncate there), as HmmFs words it; null when there is none or the op expects it.
 */
export function fileLimitError(op: Op, limit: number): HmmlabError | null {
  if (op.expect === 'EFBIG') return null;
  try {
    if (op.op === 'truncate') checkFileLimit('truncate', 0, op.size, limit);
    else if ((op.op === 'write' || op.op === 'mapwrite' || op.op === 'diowrite') && op.len > 0)
      checkFileLimit(op.op, op.off, op.len, limit);
  } catch (e) {
    return e as HmmlabError;
  }
  return null;
}
