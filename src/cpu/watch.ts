/**
 * A CPU worker that watches stable bytes while another thread runs an op (fsx from the workers,
 * src/oplog/workers.ts): it loads each watched range through its own shared mapping, again and
 * again, and compares it with the bytes the reference model says it holds, until the owner sets
 * the stop word. The op leaves those bytes alone, so any difference is a lost or stale page that
 * the op's own paths (reclaim, writeback, device faults beside it) let a concurrent load see.
 * Each load holds its translation a while (CpuMm.hold, HOLD_MS), comparing all along: a PTE
 * change that does not wait for the CPU shootdown (reclaim freeing the page) shows as the slot's
 * next page under the held translation.
 */
import { firstDifference } from '../bench/random.ts';
import type { CpuMm } from './access.ts';

/** How long a watcher's load keeps its translation, comparing. */
export const HOLD_MS = 0.2;

export interface WatchRange {
  /** File offset of the first byte, and what the bytes must be. */
  off: number;
  bytes: Uint8Array;
}

export interface WatchResult {
  /** Loads made (each range once a load). */
  loads: number;
  /** The first difference: the file offset and the bytes found and expected there. */
  mismatch: { off: number; got: number; want: number } | null;
}

export async function watchRanges(
  mm: CpuMm,
  vmaId: number,
  ranges: WatchRange[],
  ctl: SharedArrayBuffer,
): Promise<WatchResult> {
  const stop = new Int32Array(ctl);
  let loads = 0;
  if (ranges.length === 0) return { loads, mismatch: null };
  for (;;) {
    for (const r of ranges) {
      if (Atomics.load(stop, 0) !== 0) return { loads, mismatch: null };
      let bad: { off: number; got: number; want: number } | null = null;
      loads += await mm.hold(vmaId, r.off, r.bytes.length, HOLD_MS, (got) => {
        const i = firstDifference(got, r.bytes);
        if (i < 0) return true;
        bad = { off: r.off + i, got: got[i], want: r.bytes[i] };
        return false;
      });
      if (bad) return { loads, mismatch: bad };
    }
  }
}
