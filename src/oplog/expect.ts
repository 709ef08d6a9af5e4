/**
 * Expected failures (oplog.md's `"expect":"CODE"`, as xfstests' expected errors): an op that says
 * it fails with CODE must fail with exactly that code, and the run goes on. This module says
 * whether an op failed as expected, and what of a failed write-like op's data landed, exactly, so
 * that the reference model stays right after it:
 *
 * - write(2), diowrite: nothing (the blocks of the whole range are reserved before any byte lands;
 *   EFBIG is checked before that).
 * - mapwrite: the stores run page by page, each through its write-protect fault; when page_mkwrite
 *   refuses page P (ENOSPC, SIGBUS), the bytes before P landed (the file was extended first);
 *   EFBIG comes before anything.
 * - devwrite refused by page_mkwrite (EFAULT, SIGBUS): every page's stores landed except the
 *   refused pages', which the error carries as data (`HmmlabError.pages`, File.deviceWrite).
 * - read-like ops, fsync, dropcaches: no data changes.
 *
 * For anything else (a truncate, punch or remount that failed, a failure these rules do not cover)
 * the model cannot know the file afterwards: `landedRanges` returns null and a checked replay stops.
 */
import { errorPages, HmmlabError, isHmmlabError } from '../errors.ts';
import { describeOp, isReadOp, type Op } from './schema.ts';

export type Range = readonly [number, number];

/**
 * null when `err` (null: the op succeeded) is the failure `op` expects, else the EEXPECT error
 * naming the line, what was expected and what happened.
 */
export function expectMismatch(op: Op, line: number, err: unknown): HmmlabError | null {
  const want = op.expect;
  if (want === undefined) return null;
  const where = `line ${line} (${describeOp(op)})`;
  if (err === null) return new HmmlabError('EEXPECT', `${where}: expected ${want}, but the op succeeded`);
  if (isHmmlabError(err) && err.code === want) return null;
  const got = isHmmlabError(err) ? `${err.code}: ${err.message}` : String(err);
  return new HmmlabError('EEXPECT', `${where}: expected ${want}, got ${got}`, { cause: err });
}

/** [off, off+len) without the pages `holes` (page size `ps`). */
function without(off: number, len: number, holes: readonly number[], ps: number): Range[] {
  const out: Range[] = [];
  let from = off;
  const end = off + len;
  for (const p of [...holes].sort((a, b) => a - b)) {
    const hs = Math.max(off, p * ps);
    const he = Math.min(end, (p + 1) * ps);
    if (he <= hs) continue;
    if (hs > from) out.push([from, hs]);
    from = Math.max(from, he);
  }
  if (from < end) out.push([from, end]);
  return out;
}

/**
 * The file ranges of `op`'s data that landed although it failed with `err` (as it expected), or
 * null when the rules above do not say (the model cannot follow).
 */
export function landedRanges(op: Op, err: HmmlabError, pageSize: number): Range[] | null {
  if (isReadOp(op) || op.op === 'fsync' || op.op === 'dropcaches') return [];
  if (err.code === 'EFBIG') return op.op === 'truncate' || 'tag' in op ? [] : null;
  switch (op.op) {
    case 'write':
    case 'diowrite':
      return err.code === 'ENOSPC' ? [] : null;
    case 'mapwrite': {
      // filemap_fault names the page page_mkwrite refused: the stores before it landed.
      const refused = errorPages(err);
      if (err.code !== 'ENOSPC' || refused?.length !== 1) return null;
      const stop = refused[0] * pageSize;
      return stop > op.off ? [[op.off, Math.min(stop, op.off + op.len)]] : [];
    }
    case 'devwrite': {
      // File.deviceWrite names the refused pages: every other page's stores landed.
      const refused = errorPages(err) ?? [];
      if (err.code !== 'EFAULT' || refused.length === 0) return null;
      return without(op.off, op.len, refused, pageSize);
    }
    default:
      return null;
  }
}
