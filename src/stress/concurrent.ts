/**
 * `hmmlab stress --concurrent`: CPU threads and device kernels on the same pages at the same time.
 *
 * One file, two regions. Counters: COUNTER_PAGES pages of u32 words that the device's atomic
 * kernel (N device threads, each `iters` atomicAdd) and the CPU workers (Atomics.add through their
 * shared mappings, each an access under a writable PTE) increment. Slots: a u32 per slot, device
 * thread t's at word 2t (the slots kernel stores slotValue(tag, t), a new tag each run), CPU slot j
 * at word 2j + 1, owned by worker j % M, which stores it through its mapping and with write(2) and
 * checks it with read(2) and loads (src/cpu/stressLoop.ts). Both regions are on pages both sides
 * use; the host-page and device-frame budgets are small, so reclaim and device eviction run all
 * the time, and fsync and drop_caches run beside the kernels; the invariant checker runs every
 * CHECK_EVERY_MS with the mount held exclusive (everything else waits for it).
 *
 * At the end every counter must equal the increments both sides made, every slot its last
 * writer's value, the file on disk the same after a final fsync and a remount, and the invariant
 * checker must never have fired. A violation names the page, its state on both sides (host, CPU,
 * device: the snapshot row) and the seed. The workload is seeded; the interleaving is the
 * machine's, so a run is repeated by its seed and options, not replayed op for op.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HmmFsCpuOwner } from '../cpu/hmmfsOwner.ts';
import { CTL_KERNELS, CTL_STOP, CTL_WORDS, type WorkerStressResult } from '../cpu/stressLoop.ts';
import { CpuThreads } from '../cpu/threads.ts';
import { slotValue } from '../device/kernels.ts';
import { errorMessage, isHmmlabError } from '../errors.ts';
import { type File, type FsPageSnapshot, HmmFs } from '../fs/hmmfs.ts';
import { plantedBug } from '../inject/planted.ts';
import { checkInvariants } from '../policy/invariants.ts';
import type { CoherencePolicy } from '../policy/policy.ts';

/** Pages of counters at the start of the file. */
export const COUNTER_PAGES = 2;
/** How often the invariant checker runs (the mount held exclusive). */
export const CHECK_EVERY_MS = 1000;
/** fsync and drop_caches beside the kernels, about this often. */
const FSYNC_EVERY_MS = 250;
const DROP_CACHES_EVERY_MS = 700;

export const CONCURRENT_FILE = 'concurrent.dat';

export interface ConcurrentOptions {
  seed: number;
  /** Device threads of each kernel (N). */
  deviceThreads: number;
  /** CPU worker threads (M). */
  cpuThreads: number;
  durationMs: number;
  pageSize: number;
  hostPages: number;
  /** The device policy of the mount (mirror or migrate), over its own device memory. */
  policy: CoherencePolicy;
  /** atomicAdd calls of each device thread a kernel run (default 4). */
  deviceIters?: number;
  /** Directory of the backing file (default: a fresh temporary one, removed after). */
  dir?: string;
  /** Called about every 200 ms: time gone, and what ran so far. */
  onProgress?: (elapsedMs: number, kernels: number) => void;
}

/** Something a check found: where, and the page's state on both sides when it was found. */
export interface Violation {
  kind: 'counter' | 'slot' | 'stale-read' | 'disk' | 'invariant' | 'error';
  message: string;
  /** The page, and its snapshot row (host state and flags, CPU and device permission, frame, DIRTY). */
  page?: number;
  state?: FsPageSnapshot;
}

export interface ConcurrentResult {
  seed: number;
  policy: string;
  pageSize: number;
  hostPages: number;
  deviceThreads: number;
  cpuThreads: number;
  durationMs: number;
  /** Kernel runs: atomic increments and slot stores. */
  atomicKernels: number;
  slotKernels: number;
  deviceIncrements: number;
  cpuIncrements: number;
  /** Increments missing from the counters (expected minus found, over the words that lack some). */
  lostUpdates: number;
  counterMismatches: number;
  slotMismatches: number;
  /** Reads (read(2), loads) of a worker's own slot that returned something else than it wrote last. */
  staleReads: number;
  diskMatches: boolean;
  invariantViolations: number;
  invariantChecks: number;
  /** CPU loads and stores (page accesses) made while a device kernel was in flight. */
  cpuAccessesDuringKernels: number;
  cpuAccesses: number;
  cpuSyscalls: number;
  cpuFaults: number;
  /** Device fault grants whose install an invalidation raced (mmu_interval_read_retry). */
  mmuIntervalRetries: number;
  /** CPU TLB shootdowns that had to wait for a thread inside an access. */
  shootdownWaits: number;
  cpuShootdowns: number;
  deviceShootdowns: number;
  deviceEvictions: number;
  hostReclaim: number;
  fsyncs: number;
  dropCaches: number;
  /** The planted bug of this process (HMMLAB_PLANTED_BUG), if any. */
  planted: string | null;
  violations: Violation[];
}

/** Where the regions lie, in bytes and words. */
export function concurrentLayout(pageSize: number, deviceThreads: number) {
  const counterWords = (COUNTER_PAGES * pageSize) / 4;
  const slotWords = 2 * deviceThreads;
  const slotOff = COUNTER_PAGES * pageSize;
  const slotPages = Math.ceil((slotWords * 4) / pageSize);
  return { counterOff: 0, counterWords, slotOff, slotWords, size: (COUNTER_PAGES + slotPages) * pageSize };
}

/** The increments one atomic run makes to each counter word (kernels.ts: thread i, step s on word (i * spread + s) mod n). */
export function deviceIncrementsPerWord(words: number, threads: number, iters: number): Uint32Array {
  const out = new Uint32Array(words);
  const spread = Math.max(1, Math.floor(words / threads));
  for (let i = 0; i < threads; i++) for (let s = 0; s < iters; s++) out[(i * spread + s) % words]++;
  return out;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** xorshift32 in [0, 1). */
function rng(seed: number): () => number {
  let x = (seed ^ 0x5bd1e995) >>> 0 || 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x1_0000_0000;
  };
}

function u32(bytes: Uint8Array): Uint32Array {
  return new Uint32Array(
    bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength - (bytes.byteLength % 4)),
  );
}

export async function runConcurrentStress(o: ConcurrentOptions): Promise<ConcurrentResult> {
  const iters = o.deviceIters ?? 4;
  const L = concurrentLayout(o.pageSize, o.deviceThreads);
  const ownDir = o.dir === undefined;
  const dir = o.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'hmmlab-concurrent-'));
  const violations: Violation[] = [];
  const hfs = await HmmFs.mount({ dir, pageSize: o.pageSize, hostPages: o.hostPages, policy: o.policy });
  let threads: CpuThreads | null = null;
  const before = hfs.vmstat();
  const state = (page: number): FsPageSnapshot | undefined => {
    try {
      return hfs.snapshot(CONCURRENT_FILE, page, page)[0];
    } catch {
      return undefined;
    }
  };
  const pageOf = (off: number) => Math.floor(off / o.pageSize);
  const fail = (kind: Violation['kind'], message: string, off?: number) => {
    const page = off === undefined ? undefined : pageOf(off);
    violations.push({ kind, message, page, state: page === undefined ? undefined : state(page) });
  };
  let atomicKernels = 0;
  let slotKernels = 0;
  let lastTag = 0;
  let fsyncs = 0;
  let drops = 0;
  let checks = 0;
  let invariantViolations = 0;
  /** The invariant checker, once (the mount held exclusive): false, and a violation, if it fired. */
  const invariantsHold = async (): Promise<boolean> => {
    checks++;
    try {
      await checkInvariants(hfs);
      return true;
    } catch (e) {
      invariantViolations++;
      fail('invariant', errorMessage(e), pageInMessage(e, o.pageSize));
      return false;
    }
  };
  const t0 = performance.now();
  const deadline = t0 + o.durationMs;
  const ctl = new Int32Array(new SharedArrayBuffer(CTL_WORDS * 4));
  const stop = () => Atomics.store(ctl, CTL_STOP, 1);
  const stopped = () => Atomics.load(ctl, CTL_STOP) !== 0 || performance.now() >= deadline;
  const results: WorkerStressResult[] = [];
  let f: File | null = null;
  let image: Image | null = null;
  let mismatches: Mismatches = { counters: 0, slots: 0, lost: 0, total: 0 };
  let threadStats = { cpu_shootdowns: 0, cpu_shootdown_waits: 0 };
  try {
    f = await hfs.open(CONCURRENT_FILE, { create: true });
    await f.truncate(L.size);
    const file = f;
    const owner = new HmmFsCpuOwner(hfs);
    threads = await CpuThreads.start(owner, { threads: o.cpuThreads });
    const workers = threads.workers;
    const mapped = await Promise.all(
      workers.map(async (w) => {
        const fd = await w.api.open(CONCURRENT_FILE);
        return { fd, vmaId: await w.api.mmap(fd) };
      }),
    );
    const rand = rng(o.seed);
    // The CPU side: each worker's loop, in its own thread, until the stop word.
    const cpu = Promise.all(
      workers.map((w, k) =>
        w.api.concurrentStress({
          cpu: k,
          cpus: workers.length,
          seed: (o.seed * 0x9e3779b1 + k + 1) >>> 0,
          vmaId: mapped[k].vmaId,
          fd: mapped[k].fd,
          counterOff: L.counterOff,
          counterWords: L.counterWords,
          slotOff: L.slotOff,
          slotWords: L.slotWords,
          maxAdds: 100_000,
          pageSize: o.pageSize,
          ctl: ctl.buffer as SharedArrayBuffer,
        }),
      ),
    ).then(
      (rs) => {
        results.push(...rs);
      },
      (e) => {
        fail('error', `cpu worker: ${errorMessage(e)}`);
        stop();
      },
    );
    // The device side: atomic and slot kernels back to back.
    const device = (async () => {
      while (!stopped()) {
        Atomics.add(ctl, CTL_KERNELS, 1);
        try {
          if (rand() < 0.6) {
            await file.deviceAtomicInc(L.counterOff, L.counterWords, o.deviceThreads, iters);
            atomicKernels++;
          } else {
            const tag = (slotKernels % 4095) + 1;
            await file.deviceSlotStore(L.slotOff, L.slotWords, o.deviceThreads, tag);
            lastTag = tag;
            slotKernels++;
          }
        } finally {
          Atomics.sub(ctl, CTL_KERNELS, 1);
        }
      }
    })().catch((e) => {
      fail('error', `device kernel: ${errorMessage(e)}`);
      stop();
    });
    // fsync, drop_caches and the invariant checker beside them.
    const side = (async () => {
      let nextFsync = performance.now() + FSYNC_EVERY_MS * rand();
      let nextDrop = performance.now() + DROP_CACHES_EVERY_MS * rand();
      let nextCheck = performance.now() + CHECK_EVERY_MS;
      while (!stopped()) {
        const now = performance.now();
        if (now >= nextFsync) {
          await file.fsync();
          fsyncs++;
          nextFsync = now + FSYNC_EVERY_MS * (0.5 + rand());
        } else if (now >= nextDrop) {
          await hfs.dropCaches();
          drops++;
          nextDrop = now + DROP_CACHES_EVERY_MS * (0.5 + rand());
        } else if (now >= nextCheck) {
          if (!(await invariantsHold())) stop();
          nextCheck = performance.now() + CHECK_EVERY_MS;
        } else {
          await sleep(Math.min(20, Math.max(1, Math.min(nextFsync, nextDrop, nextCheck) - now)));
        }
      }
    })().catch((e) => {
      fail('error', `fsync or drop_caches: ${errorMessage(e)}`);
      stop();
    });
    const progress = (async () => {
      while (!stopped()) {
        o.onProgress?.(performance.now() - t0, atomicKernels + slotKernels);
        await sleep(200);
      }
    })();
    while (!stopped()) await sleep(20);
    stop();
    await Promise.all([device, side, progress]);
    await cpu;
    threadStats = threads.stats();

    // What the page cache holds now, read(2) from the owner, against what both sides wrote.
    image = expectedImage(L, o, iters, atomicKernels, lastTag, results);
    if (!violations.some((v) => v.kind === 'error')) {
      const got = u32(await file.read(0, L.size));
      mismatches = compareImage(got, image, L, 'the page cache', fail);
    }
    await invariantsHold();
  } catch (e) {
    fail('error', isHmmlabError(e) ? `${e.code}: ${e.message}` : errorMessage(e));
  } finally {
    stop();
    if (threads) threadStats = threads.stats();
    await threads?.close();
  }
  // The disk after a final fsync and a remount (every page and device copy written back, dropped).
  let diskMatches = false;
  const after = hfs.vmstat();
  try {
    if (f) await f.fsync();
    await hfs.remount();
    if (image && !violations.some((v) => v.kind === 'error')) {
      const disk = fs.readFileSync(path.join(dir, CONCURRENT_FILE));
      const got = u32(new Uint8Array(disk.buffer, disk.byteOffset, disk.byteLength));
      diskMatches =
        got.length === image.words.length && compareImage(got, image, L, 'the disk', fail).total === 0;
      if (got.length !== image.words.length)
        fail('disk', `the file on disk is ${disk.byteLength} bytes, expected ${L.size}`);
    }
  } catch (e) {
    fail('error', `final fsync and remount: ${errorMessage(e)}`);
  } finally {
    await hfs.unmount().catch(() => {});
    if (ownDir) fs.rmSync(dir, { recursive: true, force: true });
  }
  const d = (k: string) => (after[k] ?? 0) - (before[k] ?? 0);
  const sum = (k: 'increments' | 'accesses' | 'accessesDuringKernels' | 'syscalls' | 'faults') =>
    results.reduce((n, r) => n + r[k], 0);
  const staleReads = results.reduce((n, r) => n + r.staleReads.length, 0);
  for (const r of results)
    for (const x of r.staleReads)
      fail(
        'stale-read',
        `cpu worker ${r.cpu}: ${x.how} of its slot at offset ${x.off} returned 0x${x.got.toString(16)}, it wrote 0x${x.want.toString(16)} last`,
        x.off,
      );
  return {
    seed: o.seed,
    policy: o.policy.name,
    pageSize: o.pageSize,
    hostPages: o.hostPages,
    deviceThreads: o.deviceThreads,
    cpuThreads: o.cpuThreads,
    durationMs: Math.round(performance.now() - t0),
    atomicKernels,
    slotKernels,
    deviceIncrements: atomicKernels * o.deviceThreads * iters,
    cpuIncrements: sum('increments'),
    lostUpdates: mismatches.lost,
    counterMismatches: mismatches.counters,
    slotMismatches: mismatches.slots,
    staleReads,
    diskMatches,
    invariantViolations,
    invariantChecks: checks,
    cpuAccessesDuringKernels: sum('accessesDuringKernels'),
    cpuAccesses: sum('accesses'),
    cpuSyscalls: sum('syscalls'),
    cpuFaults: sum('faults'),
    mmuIntervalRetries: d('device_mmu_interval_retries'),
    shootdownWaits: threadStats.cpu_shootdown_waits,
    cpuShootdowns: threadStats.cpu_shootdowns,
    deviceShootdowns: d('device_shootdowns'),
    deviceEvictions: d('device_evictions'),
    hostReclaim: d('pgsteal_direct'),
    fsyncs,
    dropCaches: drops,
    planted: plantedBug(),
    violations,
  };
}

/** The file as both sides left it: counters (device runs + CPU adds), slots (their last writers). */
interface Image {
  words: Uint32Array;
  /** Per counter word: the device's and the CPU's increments (for the report). */
  device: Uint32Array;
  cpu: Uint32Array;
}

function expectedImage(
  L: ReturnType<typeof concurrentLayout>,
  o: ConcurrentOptions,
  iters: number,
  atomicKernels: number,
  lastTag: number,
  results: WorkerStressResult[],
): Image {
  const words = new Uint32Array(L.size / 4);
  const device = deviceIncrementsPerWord(L.counterWords, o.deviceThreads, iters).map(
    (n) => n * atomicKernels,
  );
  const cpu = new Uint32Array(L.counterWords);
  for (const r of results) for (let w = 0; w < L.counterWords; w++) cpu[w] += r.perWord[w];
  for (let w = 0; w < L.counterWords; w++) words[L.counterOff / 4 + w] = (device[w] + cpu[w]) >>> 0;
  const s0 = L.slotOff / 4;
  if (lastTag > 0) for (let t = 0; t < o.deviceThreads; t++) words[s0 + 2 * t] = slotValue(lastTag, t);
  for (const r of results) for (const [w, v] of r.slots) words[s0 + w] = v;
  return { words, device, cpu };
}

interface Mismatches {
  counters: number;
  slots: number;
  lost: number;
  total: number;
}

/** Compare `got` (what `where` holds) with the image; the first few differences become violations. */
function compareImage(
  got: Uint32Array,
  image: Image,
  L: ReturnType<typeof concurrentLayout>,
  where: string,
  fail: (kind: Violation['kind'], message: string, off?: number) => void,
): Mismatches {
  const m: Mismatches = { counters: 0, slots: 0, lost: 0, total: 0 };
  const c0 = L.counterOff / 4;
  const s0 = L.slotOff / 4;
  const kind = where === 'the disk' ? 'disk' : undefined;
  for (let i = 0; i < image.words.length; i++) {
    const want = image.words[i];
    const have = got[i] ?? 0;
    if (have === want) continue;
    m.total++;
    const off = 4 * i;
    if (i >= c0 && i < c0 + L.counterWords) {
      const w = i - c0;
      m.counters++;
      if (have < want) m.lost += want - have;
      if (m.counters <= 8)
        fail(
          kind ?? 'counter',
          `${where}: counter word ${w} (offset ${off}) holds ${have}, expected ${want} ` +
            `(${image.device[w]} device + ${image.cpu[w]} cpu increments)`,
          off,
        );
    } else {
      m.slots++;
      const w = i - s0;
      const who = w >= 0 && w % 2 === 0 ? `device thread ${w / 2}` : w >= 0 ? 'a cpu worker' : 'no one';
      if (m.slots <= 8)
        fail(
          kind ?? 'slot',
          `${where}: ${w >= 0 ? `slot word ${w}` : `word ${i}`} (offset ${off}, written last by ${who}) holds 0x${have.toString(16)}, expected 0x${want.toString(16)}`,
          off,
        );
    }
  }
  return m;
}

/** The page an invariant message names ("... page 3: ..."), as a byte offset, if any. */
function pageInMessage(e: unknown, pageSize: number): number | undefined {
  const m = /page (\d+)/.exec(errorMessage(e));
  return m ? Number(m[1]) * pageSize : undefined;
}
