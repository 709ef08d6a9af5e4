/**
 * A CPU worker that watches stable bytes while another thread runs an op (fsx from the workers,
 * src/oplog/workers.ts): it loads each watched range through its own shared mapping, again and
 * again, and compares it with the bytes the reference model says it holds, until the owner sets
 * the stop word. The op leaves those bytes alone, so any difference is a lost or stale page that
 * the op's own paths (reclaim, writeback, device faults beside it) let a concurrent load see.
 */
import type { CpuMm } from './access.ts';

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
      const got = await mm.load(vmaId, r.off, r.bytes.length);
      loads++;
      if (!Buffer.from(got.buffer, got.byteOffset, got.byteLength).equals(r.bytes)) {
        let i = 0;
        while (got[i] === r.bytes[i]) i++;
        return { loads, mismatch: { off: r.off + i, got: got[i], want: r.bytes[i] } };
      }
    }
  }
}
