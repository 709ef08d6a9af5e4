/**
 * Shrinking a failing op log by delta debugging (Zeller's ddmin, as fsx users expect a minimal log
 * and as fast-check shrinks the tests' logs): remove chunks of ops, half the log first, then
 * smaller chunks down to single ops, and keep a removal when the smaller log still fails the same
 * way. Every attempt is one replay (`fails`), on a fresh mount, so the number of replays bounds the
 * time; the best log found so far is the answer when the bound is reached.
 *
 * A removal can leave a device op past EOF; legalizeOplog clamps it (or drops it), so every
 * candidate is a valid log. A candidate that fails earlier than its end is cut after the op that
 * failed.
 */
import { legalizeOplog } from './generate.ts';
import type { Op } from './schema.ts';

export interface ShrinkOptions {
  /**
   * Replay `ops` once on a fresh mount: the 0-based index of the op that failed, when it failed the
   * same way as the original (the same error code); null otherwise.
   */
  fails: (ops: readonly Op[]) => Promise<number | null>;
  /** At most this many replays (default 100). */
  maxReplays?: number;
  /** After every replay: replays so far, the bound, the length of the best log so far. */
  onProgress?: (replays: number, maxReplays: number, ops: number) => void;
}

export interface ShrinkResult {
  /** The smallest failing log found (the input when nothing smaller failed). */
  ops: Op[];
  replays: number;
  /** True when the bound stopped the search before it was done. */
  bounded: boolean;
}

export async function shrinkOplog(input: readonly Op[], o: ShrinkOptions): Promise<ShrinkResult> {
  const max = o.maxReplays ?? 100;
  let best = [...input];
  let replays = 0;
  /** One attempt: the candidate, cut after its failing op, when it fails the same way. */
  const attempt = async (cand: Op[]): Promise<Op[] | null> => {
    replays++;
    const at = await o.fails(cand);
    o.onProgress?.(replays, max, at === null ? best.length : Math.min(best.length, at + 1));
    return at === null ? null : cand.slice(0, at + 1);
  };
  let chunk = Math.max(1, Math.ceil(best.length / 2));
  while (replays < max) {
    let removed = false;
    for (let start = 0; start < best.length && replays < max; ) {
      const cand = legalizeOplog([...best.slice(0, start), ...best.slice(start + chunk)]);
      const kept = cand.length < best.length ? await attempt(cand) : null;
      if (kept && kept.length < best.length) {
        best = kept;
        removed = true; // the ops after the removed chunk moved to `start`: try them next
      } else {
        start += chunk;
      }
    }
    if (chunk === 1 && !removed) return { ops: best, replays, bounded: false };
    if (!removed || chunk > best.length) chunk = Math.max(1, Math.floor(chunk / 2));
  }
  return { ops: best, replays, bounded: true };
}
