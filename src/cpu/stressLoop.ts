/**
 * A CPU worker's side of `hmmlab stress --concurrent` (src/stress/concurrent.ts), run inside the
 * worker thread: until the owner raises the stop word, a seeded mix of
 *   - atomic increments of counter words through the worker's shared mapping (Atomics.add on the
 *     host page, each its own access, so the CPU increments a counter only while it holds the page
 *     writable: its PTE grants write, and then the device has no access),
 *   - stores of the worker's own slots through the mapping, and write(2) of them,
 *   - read(2) and loads through the mapping of its own slots, each checked against the value it
 *     wrote last (no one else writes them: a stale read is an error the owner reports),
 * while device kernels increment the same counters and store their slots on the same pages.
 *
 * Slots: the slot region is a u32 a slot; device thread t owns word 2t, CPU slot j is word 2j + 1,
 * and worker `cpu` owns the CPU slots j with j % cpus === cpu. A value a worker writes is
 * ((cpu + 1) << 24) | (its write count & 0xffffff), never 0 (a slot never written reads 0).
 */
import { HmmlabError } from '../errors.ts';
import type { CpuMm } from './access.ts';
import type { CpuSyscalls } from './protocol.ts';
import { HOLD_MS } from './watch.ts';

/** The stop word and the kernels-in-flight word of the control buffer (Int32 each). */
export const CTL_STOP = 0;
export const CTL_KERNELS = 1;
export const CTL_WORDS = 2;

export interface WorkerStressParams {
  cpu: number;
  cpus: number;
  seed: number;
  /** The worker's own mapping of the file, and its fd. */
  vmaId: number;
  fd: number;
  /** Byte offset and u32 words of the counter region. */
  counterOff: number;
  counterWords: number;
  /** Byte offset and u32 words of the slot region (2 per device thread, see above). */
  slotOff: number;
  slotWords: number;
  /** Increments one atomicAdd call makes at most (each its own access). */
  maxAdds: number;
  /** The file's page size. */
  pageSize: number;
  /** CTL_WORDS Int32: stop (the owner sets it), kernels in flight (the owner counts them). */
  ctl: SharedArrayBuffer;
}

/** A read of a worker's own slot that did not return what it wrote last. */
export interface StaleRead {
  how: 'read(2)' | 'load';
  /** Byte offset in the file. */
  off: number;
  got: number;
  want: number;
}

export interface WorkerStressResult {
  cpu: number;
  /** Increments made, in all and per counter word. */
  increments: number;
  perWord: Uint32Array;
  /** The last value the worker wrote to each of its slots: [slot word index in the region, value]. */
  slots: [number, number][];
  /**
   * Loads and stores made through the mapping (each atomic add a store, a page's load one load),
   * and of those the ones made while a device kernel was in flight.
   */
  accesses: number;
  accessesDuringKernels: number;
  syscalls: number;
  faults: number;
  staleReads: StaleRead[];
}

/** xorshift32 from the worker's seed. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x1_0000_0000;
  };
}

/** The worker's loop; resolves with what it did once the stop word is set. */
export async function runWorkerStress(
  mm: CpuMm,
  sys: CpuSyscalls,
  o: WorkerStressParams,
): Promise<WorkerStressResult> {
  const ctl = new Int32Array(o.ctl);
  const rand = rng(o.seed);
  const pick = (n: number) => Math.floor(rand() * n);
  const perWord = new Uint32Array(o.counterWords);
  // This worker's CPU slots: odd words 2j + 1 of the region with j % cpus === cpu.
  const mine: number[] = [];
  for (let j = o.cpu; 2 * j + 1 < o.slotWords; j += o.cpus) mine.push(2 * j + 1);
  if (mine.length === 0) throw new HmmlabError('EINVAL', `cpu ${o.cpu}: the slot region has no slot for it`);
  const last = new Map<number, number>();
  let writes = 0;
  let increments = 0;
  let syscalls = 0;
  let during = 0;
  let accesses = 0;
  const staleReads: StaleRead[] = [];
  const slotOff = (w: number) => o.slotOff + 4 * w;
  const ps = o.pageSize;
  const nextValue = () => (((o.cpu + 1) << 24) | (++writes & 0xff_ffff)) >>> 0;
  const check = (how: StaleRead['how'], w: number, got: number) => {
    const want = last.get(w) ?? 0;
    if (got !== want && staleReads.length < 16) staleReads.push({ how, off: slotOff(w), got, want });
  };
  const start = mm.stats();
  while (Atomics.load(ctl, CTL_STOP) === 0) {
    const kernels = Atomics.load(ctl, CTL_KERNELS) > 0;
    let made = 0;
    const r = rand();
    if (r < 0.4) {
      const w = pick(o.counterWords);
      const times = 1 + pick(o.maxAdds);
      // A run of adds through one translation (one access), as a TLB holds it.
      await mm.atomicAdd(o.vmaId, o.counterOff + 4 * w, 1, times, times);
      perWord[w] += times;
      increments += times;
      made = times;
    } else if (r < 0.52) {
      const w = mine[pick(mine.length)];
      const v = nextValue();
      await mm.store(o.vmaId, slotOff(w), u32bytes(v));
      last.set(w, v);
      made = 1;
    } else if (r < 0.62) {
      const w = mine[pick(mine.length)];
      const v = nextValue();
      await sys.write(o.fd, slotOff(w), u32bytes(v));
      syscalls++;
      last.set(w, v);
    } else if (r < 0.72) {
      // read(2) of a run of this worker's slots (a page or so), each checked.
      const k = pick(mine.length);
      const span = mine.slice(k, k + 1 + pick(8));
      const from = slotOff(span[0]);
      const got = await sys.read(o.fd, from, slotOff(span[span.length - 1]) + 4 - from);
      syscalls++;
      const words = new DataView(got.buffer, got.byteOffset, got.byteLength);
      for (const w of span) check('read(2)', w, words.getUint32(slotOff(w) - from, true));
    } else {
      // Loads of this worker's slots on a page of slots through the mapping, the translation held
      // a while (CpuMm.hold), each checked every round (the device's words change under it: not
      // checked). A reclaim that frees the page without waiting for the shootdown shows here.
      const w = mine[pick(mine.length)];
      const first = Math.floor(slotOff(w) / ps) * ps;
      const end = Math.min(first + ps, slotOff(o.slotWords));
      const own = mine.filter((x) => slotOff(x) >= first && slotOff(x) < end);
      made = await mm.hold(o.vmaId, first, end - first, HOLD_MS, (got) => {
        const words = new DataView(got.buffer, got.byteOffset, got.byteLength);
        const stale = staleReads.length;
        for (const x of own) check('load', x, words.getUint32(slotOff(x) - first, true));
        return staleReads.length === stale;
      });
    }
    accesses += made;
    if (kernels || Atomics.load(ctl, CTL_KERNELS) > 0) during += made;
  }
  const end = mm.stats();
  return {
    cpu: o.cpu,
    increments,
    perWord,
    slots: [...last],
    accesses,
    accessesDuringKernels: during,
    syscalls,
    faults: end.faults - start.faults,
    staleReads,
  };
}

function u32bytes(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v, true);
  return b;
}
