/**
 * The fault engine: launch a kernel, read back the fault buffer (a small readback), coalesce,
 * service the faults in batches through the owner's servicer, install the PTEs it grants (unless an
 * invalidation raced: mmu_interval_read_retry), and replay the unfinished work until all is done.
 * An access the servicer refuses (EFAULT: page_mkwrite said no) gets the PTE's FAIL bit for the rest
 * of the run: its work is marked failed, not retried, and reported naming the page, while the other
 * threads' work lands. The same batch service, without a kernel, is `prefetchPages`
 * (cudaMemPrefetchAsync: UVM's uvm_migrate shares the fault path's service routines too).
 *
 * When the replay comes is the replay policy, NVIDIA UVM's four (uvm_gpu_replayable_faults.h,
 * uvm_perf_fault_replay_policy): `block` replays after the faults of each va_block (2 MiB) of a
 * batch; `batch` after each batch, the faults fetched but not serviced staying queued (a replayed
 * access that faults again is a duplicate of its queued entry); `batch-flush` after each batch too,
 * the rest of the buffer flushed (it faults again and is fetched anew); `once` after every fault
 * fetched was serviced. UVM defaults to batch-flush: a replay there lets the SMs whose faults were
 * serviced resume while others still wait. Here a launch runs to its end before its faults are
 * read, so every replay is a relaunch of the chunk's unfinished work, and the default is `once`
 * (`hmmlab bench faults` measures all four).
 *
 * An op of any size runs in chunks (kernels.ts planChunks: whole pages, at most the device's
 * chunkBytes of work), one after the other, each with its own launch/service/replay loop, so that
 * a launch's buffers fit the binding limits and a run holds buffers for one chunk, not for the op:
 * progress (a launch stamp per page), the fault buffer (counts of the chunk's pages), the output
 * (read back, or handed to a sink, after each chunk) and the window of the page table it binds.
 * Those buffers are the device memory's, kept from run to run (LaunchBufferPool).
 *
 * The engine reaches the device memory only through FaultEngineHost (memory.ts implements it).
 */
import { type Errno, HmmlabError } from '../errors.ts';
import type { GpuDevice } from '../gpu/device.ts';
import { type FaultInjector, injectedError } from '../inject/inject.ts';
import type { FrameWrite } from './copy.ts';
import {
  coalesceFaults,
  type DeviceFault,
  F_OVERFLOW,
  F_RAW,
  F_UNIQUE,
  type FaultLayout,
  FIRST_READ_ENTRIES,
  faultBatches,
  faultLayout,
  formatPages,
  parseFaultEntries,
} from './fault.ts';
import type { FramePool } from './frames.ts';
import {
  encodeParams,
  isThreadKernel,
  type KernelChunk,
  type KernelKind,
  type KernelParams,
  type KernelPipelines,
  type KernelPlan,
  PARAMS_BYTES,
  planChunks,
  planKernel,
} from './kernels.ts';
import type { DevicePageTable, InstalledPte, MapEntry } from './pagetable.ts';
import { pteDirty } from './pte.ts';
import { type ReplayPolicy, VA_BLOCK_BYTES } from './replayPolicy.ts';
import { type DeviceCounters, diffCounters, type FaultBatchRecord } from './stats.ts';

/** What the fault engine needs of the device memory it runs on (memory.ts's DeviceMemory). */
export interface FaultEngineHost {
  readonly gpu: GpuDevice;
  readonly kernels: KernelPipelines;
  readonly pool: FramePool;
  readonly counters: DeviceCounters;
  readonly pageSize: number;
  readonly batchSize: number;
  readonly maxLaunches: number;
  readonly chunkBytes: number;
  readonly replayPolicy: ReplayPolicy;
  readonly inject: FaultInjector;
  readonly launchBuffers: LaunchBufferPool;
  allocFrames(space: DevicePageTable, indices: number[]): Promise<(number | null)[]>;
  freeFrames(frames: number[]): void;
  map(space: DevicePageTable, entries: MapEntry[]): Promise<void>;
  /** map() for a caller that holds the table's lock (fault service's install). */
  mapLocked(space: DevicePageTable, entries: MapEntry[]): Promise<void>;
  markFailed(space: DevicePageTable, pages: { index: number; write: boolean }[], on: boolean): Promise<void>;
  /** Host pages into frames, staged: submitted by `flushCopies` (or any later read of frames). */
  stageToFrames(items: FrameWrite[]): Promise<void>;
  flushCopies(): void;
  logBatch(rec: FaultBatchRecord): void;
}

/** What the servicer gets besides the faults. */
export interface FaultServiceContext {
  readonly space: DevicePageTable;
  /** 'fault' in a kernel run; 'prefetch' for prefetchPages (no kernel waits on the answers). */
  readonly cause: 'fault' | 'prefetch';
  /**
   * The page's frame and permission: as installed, or as granted by an earlier service whose install
   * lost a race (pending: the replay installs it). A permission upgrade reuses the frame.
   */
  lookup(index: number): InstalledPte | undefined;
  /** Frames for these pages (allocFrames); null where none could be had. Unused ones are freed after. */
  allocFrames(indices: number[]): Promise<(number | null)[]>;
  /**
   * Copy host pages into frames granted in this batch: staged, submitted with the batch's other
   * copies before its PTEs are installed. Fails (copy-to-device) before anything is copied.
   */
  copyToFrames(items: FrameWrite[]): Promise<void>;
  /**
   * The servicer committed a grant for page `index` (its records say the device has it): from now
   * on it stands as pending until the install, so that an invalidation that runs before the
   * install (a CPU path on the page, once the servicer unlocked it) finds it: a write-protect
   * makes it read-only, a revoke takes it back. The install then puts in what is left of it.
   * A servicer that never calls it has its answers installed as they are.
   */
  grant(index: number, frame: number, perm: 'ro' | 'rw'): void;
  /**
   * Service failed part way (a read of the disk, a copy): the faults answered ok are still
   * installed, then the kernel run fails with `error`. The servicer must have left every fault it
   * did not answer ok as it found it (UVM cancels the batch; the next run faults again).
   */
  fail(error: unknown): void;
}

/** The servicer's answer for one fault. */
export type FaultResolution =
  /** Install page -> frame with perm (the servicer has queued the copy into the frame). */
  | { ok: true; frame: number; perm: 'ro' | 'rw' }
  /** Refuse the access: it fails (SIGBUS-like), its work is not retried. */
  | { ok: false; code: Errno; message: string }
  /** Not now (no frame, a race): the access faults again on the next replay. */
  | { ok: false; retry: true };

/** The owner's (policy's) fault handler: one answer per fault, in order. */
export type FaultServicer = (faults: DeviceFault[], ctx: FaultServiceContext) => Promise<FaultResolution[]>;

export interface FailedAccess {
  space: number;
  index: number;
  write: boolean;
  code: Errno;
  message: string;
  /** Work items (words, or logical threads for atomic) that failed on it. */
  items: number;
}

/**
 * Where a devread's bytes go as the run goes, instead of one buffer as large as the op: each
 * chunk's bytes once its work is done, in file order; `off` is the file offset of bytes[0]. The
 * view is valid during the call only (the next chunk's bytes reuse it): copy what is kept.
 */
export type DeviceOutputSink = (bytes: Uint8Array, off: number) => void;

export interface KernelResult {
  kind: KernelKind;
  space: number;
  /** Invocations per launch (the first chunk's), and work items. */
  threads: number;
  items: number;
  /** Chunks the work was cut into (planChunks), launches over all of them, and replays: launches after a chunk's first. */
  chunks: number;
  launches: number;
  replays: number;
  /** What this run cost (counters after - before; concurrent work on the device counts too). */
  counters: DeviceCounters;
  batches: FaultBatchRecord[];
  failed: FailedAccess[];
  /** The SIGBUS-like error for the failed accesses, if any (not thrown: the other work landed). */
  error?: HmmlabError;
  /** devread without a sink: the bytes read. */
  bytes?: Uint8Array;
  /** checksum: per page of the range, wrapping sum and xor of its words (within the range). */
  checksums?: { index: number; sum: number; xor: number }[];
  /** Wall time of the run, ms; and of each launch (dispatch to fault readback), first launch first. */
  ms: number;
  launchMs: number[];
  /** GPU time of each launch's compute pass (timestamp queries), where the adapter has them. */
  gpuMs?: number[];
}

// ---- the run's buffers, kept by the device memory from run to run ----

/** A kernel run's buffers, each at least as large as its largest chunk needs. */
export interface LaunchBuffers {
  params: GPUBuffer;
  progress: GPUBuffer;
  out: GPUBuffer;
  dummy: GPUBuffer;
  /** The fault buffer (fault.ts) for the chunk's pages: counts are kept from the chunk's first page. */
  faults: GPUBuffer;
  /** The launch's readback: fault header, first entries, raw counts and PTEs of the chunk's pages, timestamps. */
  readback: GPUBuffer;
  /** The launch's GPU timestamps (begin, end of the compute pass) and their resolve buffer. */
  timestamps?: { set: GPUQuerySet; resolve: GPUBuffer };
  /** The output's readback and its host copy, made at the first chunk with output. */
  outReadback?: GPUBuffer;
  outHost?: Uint8Array;
}

interface LaunchNeeds {
  progress: number;
  out: number;
  faults: number;
  readback: number;
}

const roundUp = (n: number) => 2 ** Math.ceil(Math.log2(Math.max(n, 256)));

/**
 * The device memory's launch buffers: a run takes a set that holds its largest chunk (or makes
 * one, sizes rounded up to powers of two) and gives it back at its end; runs on several spaces at
 * once each take their own. At most two sets are kept.
 */
export class LaunchBufferPool {
  private readonly free: { needs: LaunchNeeds; bufs: LaunchBuffers }[] = [];

  constructor(private readonly gpu: GpuDevice) {}

  take(need: LaunchNeeds): { needs: LaunchNeeds; bufs: LaunchBuffers } {
    const k = this.free.findIndex(
      (x) =>
        x.needs.progress >= need.progress &&
        x.needs.out >= need.out &&
        x.needs.faults >= need.faults &&
        x.needs.readback >= need.readback,
    );
    if (k >= 0) return this.free.splice(k, 1)[0];
    const needs = {
      progress: roundUp(need.progress),
      out: roundUp(need.out),
      faults: roundUp(need.faults),
      readback: roundUp(need.readback),
    };
    const g = this.gpu;
    const storage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    const made: GPUBuffer[] = [];
    const make = (label: string, bytes: number, usage: number) => {
      const b = g.createBuffer(label, bytes, usage);
      made.push(b);
      return b;
    };
    try {
      const bufs: LaunchBuffers = {
        params: make('launch-params', PARAMS_BYTES, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST),
        progress: make('launch-progress', needs.progress, storage),
        out: make('launch-out', needs.out, storage),
        // Unused frame bindings get disjoint slices of one small buffer (writable bindings may not alias).
        dummy: make('frames-unused', 256 * 4, storage),
        faults: make('faults', needs.faults, storage),
        readback: make('fault-readback', needs.readback, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST),
      };
      if (g.has('timestamp-query')) {
        bufs.timestamps = {
          set: g.device.createQuerySet({ label: 'launch-timestamps', type: 'timestamp', count: 2 }),
          resolve: make('launch-timestamps', 256, GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC),
        };
      }
      return { needs, bufs };
    } catch (e) {
      for (const b of made) b.destroy();
      throw e;
    }
  }

  give(set: { needs: LaunchNeeds; bufs: LaunchBuffers }): void {
    this.free.push(set);
    if (this.free.length > 2) {
      // Keep the two largest.
      this.free.sort((a, b) => b.needs.readback + b.needs.out - (a.needs.readback + a.needs.out));
      for (const x of this.free.splice(2)) destroyLaunchBuffers(x.bufs);
    }
  }

  destroy(): void {
    for (const x of this.free.splice(0)) destroyLaunchBuffers(x.bufs);
  }
}

function destroyLaunchBuffers(b: LaunchBuffers): void {
  for (const x of [b.params, b.progress, b.out, b.dummy, b.faults, b.readback, b.outReadback]) x?.destroy();
  b.timestamps?.set.destroy();
  b.timestamps?.resolve.destroy();
}

/** Bytes of the launch readback for a chunk span: header, entries, counts, PTEs, then 16 of timestamps. */
function readbackBytes(span: number, layout: FaultLayout): number {
  const entryWords = 2 * Math.min(layout.cap, FIRST_READ_ENTRIES);
  return (4 + entryWords + 3 * span) * 4 + 8 + 16;
}

/** A chunk's place in the run, for the fault loop and the batch records. */
interface RunState {
  plan: KernelPlan;
  bufs: LaunchBuffers;
  faultLayout: FaultLayout;
  failedPages: Map<string, FailedAccess>;
  batches: FaultBatchRecord[];
  launchMs: number[];
  gpuMs: number[];
  launches: number;
}

export async function runKernel(
  host: FaultEngineHost,
  kind: KernelKind,
  space: DevicePageTable,
  params: KernelParams,
  servicer: FaultServicer,
  sink?: DeviceOutputSink,
): Promise<KernelResult> {
  const t0 = performance.now();
  const before = { ...host.counters };
  const plan = planKernel(kind, params, host.pageSize);
  space.ensureCapacity(plan.lastPage + 1);
  let span = 1;
  let slots = 1;
  let outWords = 1;
  for (const c of planChunks(plan, host.chunkBytes)) {
    slots = Math.max(slots, c.slots);
    outWords = Math.max(outWords, c.outWords);
    span = Math.max(span, c.lastPage - c.firstPage + 1);
  }
  const layout = faultLayout(span);
  const set = host.launchBuffers.take({
    progress: slots * 4,
    out: outWords * 4,
    faults: layout.words * 4,
    readback: readbackBytes(span, layout),
  });
  const bufs = set.bufs;
  const run: RunState = {
    plan,
    bufs,
    faultLayout: layout,
    failedPages: new Map(),
    batches: [],
    launchMs: [],
    gpuMs: [],
    launches: 0,
  };
  // Without a sink, the caller asked for the op's bytes whole.
  const bytes = kind === 'devread' && !sink ? new Uint8Array(plan.items * 4) : undefined;
  const checksums: KernelResult['checksums'] = kind === 'checksum' ? [] : undefined;
  let chunks = 0;
  let threads = 0;
  let finished = false;
  try {
    for (const chunk of planChunks(plan, host.chunkBytes)) {
      threads ||= chunk.threads;
      await runChunk(host, space, chunk, servicer, run);
      chunks++;
      host.counters.chunks++;
      if (chunk.outWords) {
        const out = await readChunkOutput(host.gpu, bufs, chunk.outWords * 4);
        if (kind === 'devread') {
          if (sink) sink(out, (plan.firstWord + chunk.itemBase) * 4);
          else bytes!.set(out, chunk.itemBase * 4);
        } else {
          const w = new Uint32Array(out.buffer, out.byteOffset, chunk.outWords);
          for (let p = chunk.firstPage; p <= chunk.lastPage; p++) {
            const o = 2 * (p - chunk.firstPage);
            checksums!.push({ index: p, sum: w[o], xor: w[o + 1] });
          }
        }
      }
      if (isThreadKernel(kind) && run.failedPages.size) await countFailedThreads(host.gpu, plan, chunk, run);
    }
    host.counters.kernels++;
    const result: KernelResult = {
      kind,
      space: space.id,
      threads,
      items: plan.items,
      chunks,
      launches: run.launches,
      replays: run.launches - chunks,
      counters: diffCounters(host.counters, before),
      batches: run.batches,
      failed: [],
      bytes,
      checksums,
      ms: 0,
      launchMs: run.launchMs,
      gpuMs: bufs.timestamps ? run.gpuMs : undefined,
    };
    if (run.failedPages.size) {
      if (!isThreadKernel(kind)) countFailedWords(plan, run.failedPages);
      result.failed = [...run.failedPages.values()].sort((a, b) => a.index - b.index);
      result.error = failedError(kind, result.failed);
    }
    result.ms = performance.now() - t0;
    finished = true;
    return result;
  } finally {
    // A run that failed before its replay re-faulted a raced page: install the grant now, so
    // no page is left granted but unmapped (the owner's records say it is mapped).
    await installPending(host, space);
    // A refusal holds for this run only: the next run asks the servicer again.
    if (run.failedPages.size && !host.gpu.lost) {
      const clear = host.markFailed(space, [...run.failedPages.values()], false);
      // On the error path, the run's own error is the one to report.
      await (finished ? clear : clear.catch(() => {}));
    }
    if (host.gpu.lost) destroyLaunchBuffers(bufs);
    else host.launchBuffers.give(set);
  }
}

/** Install the grants an invalidation raced that no replay installed (the owner's records name them). */
async function installPending(host: FaultEngineHost, space: DevicePageTable): Promise<void> {
  if (!space.pending.size || host.gpu.lost) return;
  const entries = [...space.pending].map(([index, e]) => ({
    index,
    frame: e.frame,
    perm: e.perm as 'ro' | 'rw',
  }));
  await host.map(space, entries).catch(() => {});
}

/** Faults fetched into those already queued (batch, block): a page queued already is a duplicate. */
function mergeQueued(
  queued: DeviceFault[],
  fetched: DeviceFault[],
): { queue: DeviceFault[]; fresh: DeviceFault[] } {
  if (queued.length === 0) return { queue: fetched, fresh: fetched };
  const at = new Map(queued.map((f) => [f.index, f]));
  const fresh: DeviceFault[] = [];
  for (const f of fetched) {
    const q = at.get(f.index);
    if (!q) {
      fresh.push(f);
      continue;
    }
    q.raw += f.raw;
    if (f.write && !q.write) {
      q.write = true;
      q.thread = f.thread;
    }
  }
  return { queue: coalesceFaults([...queued, ...fresh]), fresh };
}

/** The faults serviced before the next replay, by policy; the rest stays queued (or is flushed). */
function nextService(
  policy: ReplayPolicy,
  queue: DeviceFault[],
  batchSize: number,
  pageSize: number,
): { now: DeviceFault[][]; rest: DeviceFault[] } {
  switch (policy) {
    case 'once':
      return { now: faultBatches(queue, batchSize), rest: [] };
    case 'batch-flush':
      return { now: [queue.slice(0, batchSize)], rest: [] };
    case 'batch':
      return { now: [queue.slice(0, batchSize)], rest: queue.slice(batchSize) };
    case 'block': {
      // The first batch's faults of its first va_block (the queue is in page order).
      const batch = queue.slice(0, batchSize);
      const block = (f: DeviceFault) => Math.floor((f.index * pageSize) / VA_BLOCK_BYTES);
      const b0 = block(batch[0]);
      let n = 1;
      while (n < batch.length && block(batch[n]) === b0) n++;
      return { now: [batch.slice(0, n)], rest: queue.slice(n) };
    }
  }
}

/**
 * One chunk's fault/replay loop: launch, service faults as the replay policy says, replay until no
 * work is left undone (refused work is failed, not undone). The chunks before it are done and stay
 * so whatever happens to this one: a launch that fails here leaves their pages as they were serviced.
 */
async function runChunk(
  host: FaultEngineHost,
  space: DevicePageTable,
  chunk: KernelChunk,
  servicer: FaultServicer,
  run: RunState,
): Promise<void> {
  const { plan, bufs } = run;
  let bind = bindLaunch(host, chunk, space, bufs);
  let boundPte = space.pte;
  let queue: DeviceFault[] = [];
  let lastGranted = new Set<number>();
  let evictionsAtGrant = 0;
  let stuck = 0;
  const c = host.counters;
  const policy = host.replayPolicy;
  /** The space's invalidation sequence at the last install: a CPU path that took a page back since is progress too. */
  let seqAtInstall = -1;
  for (let launchNo = 1; ; launchNo++) {
    if (space.pte !== boundPte) {
      // The servicer mapped a page past the table's end: the table grew, bind the new buffers.
      bind = bindLaunch(host, chunk, space, bufs);
      boundPte = space.pte;
    }
    if (launchNo > host.maxLaunches) {
      throw new HmmlabError(
        'EGPU',
        `device kernel ${plan.kind}: work unfinished after ${host.maxLaunches} launches (fault loop)` +
          (chunk.index > 0 ? ` in chunk ${chunk.index + 1}` : ''),
      );
    }
    const tl = performance.now();
    const { faults: fetched, raw, gpuMs } = await launch(host, plan, chunk, space, bind, run, launchNo);
    const lms = performance.now() - tl;
    run.launchMs.push(lms);
    if (gpuMs !== undefined) {
      run.gpuMs.push(gpuMs);
      c.launchGpuMs += gpuMs;
    }
    c.launchMs += lms;
    run.launches++;
    c.launches++;
    if (launchNo > 1) {
      c.replays++;
      c.replayMs += lms;
    }
    if (fetched.length === 0) return;
    // Faults that a queue holds already are duplicates of their entries (UVM's batch and block).
    const merged = policy === 'batch' || policy === 'block' ? mergeQueued(queue, fetched) : null;
    queue = merged ? merged.queue : fetched;
    const fresh = merged ? merged.fresh : fetched;
    c.faultsRaw += raw;
    c.faultsUnique += fresh.length;
    c.faultsDuplicate += raw - fresh.length;
    for (const f of fresh) {
      if (f.write) c.faultsWrite++;
      else c.faultsRead++;
    }
    // Every page granted at the last service faults again and nothing was evicted since: the
    // servicer's answer does not let the access through, and replaying would never end.
    const faulted = new Set(fetched.map((f) => f.index));
    const again = lastGranted.size > 0 && [...lastGranted].every((i) => faulted.has(i));
    // Unless an invalidation ran since (a concurrent CPU path took a page back: it faults again).
    const untouched = space.readBegin() === seqAtInstall;
    stuck = again && untouched && c.evictions === evictionsAtGrant ? stuck + 1 : 0;
    if (stuck >= 3) {
      throw new HmmlabError(
        'EGPU',
        `device kernel ${plan.kind}: no progress: pages ${formatPages(fetched.map((f) => f.index))} of space ${space.id} ` +
          `fault again after every service (${run.launches} launches)`,
      );
    }
    const batchSize = Math.min(host.batchSize, host.pool.devicePages);
    const { now, rest } = nextService(policy, queue, batchSize, host.pageSize);
    queue = rest;
    lastGranted = new Set();
    for (const batch of now) {
      const { rec, granted } = await serviceBatch(host, plan.kind, space, batch, servicer, run.failedPages, {
        chunk: chunk.index,
        launch: run.launches,
        batch: run.batches.length,
      });
      rec.fetchMs = lms - (gpuMs ?? 0);
      rec.launchGpuMs = gpuMs ?? 0;
      run.batches.push(rec);
      host.logBatch(rec);
      for (const i of granted) lastGranted.add(i);
    }
    evictionsAtGrant = c.evictions;
    seqAtInstall = space.installedAt;
  }
}

/**
 * A chunk's output, read back through one staging buffer and one host buffer for the whole run
 * (a view, valid until the next chunk's): a devread of gigabytes allocates them once.
 */
async function readChunkOutput(g: GpuDevice, bufs: LaunchBuffers, bytes: number): Promise<Uint8Array> {
  const size = bufs.out.size;
  bufs.outReadback ??= g.createBuffer(
    'out-readback',
    size,
    GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  );
  if (!bufs.outHost || bufs.outHost.byteLength < size) bufs.outHost = new Uint8Array(size);
  const enc = g.device.createCommandEncoder({ label: 'output readback' });
  enc.copyBufferToBuffer(bufs.out, 0, bufs.outReadback, 0, bytes);
  g.device.queue.submit([enc.finish()]);
  await g.map(bufs.outReadback, GPUMapMode.READ, 0, bytes);
  bufs.outHost.set(new Uint8Array(bufs.outReadback.getMappedRange(0, bytes)));
  bufs.outReadback.unmap();
  return bufs.outHost.subarray(0, bytes);
}

/** The PTE window a chunk binds: from its first page rounded down to the offset alignment. */
function pteWindow(host: FaultEngineHost, chunk: KernelChunk): { base: number; pages: number } {
  const align = Math.max(1, host.gpu.limits.minStorageBufferOffsetAlignment / 4);
  const base = Math.floor(chunk.firstPage / align) * align;
  return { base, pages: chunk.lastPage - base + 1 };
}

/** Bind the chunk's window of the page table, the fault buffer, progress, output and frames. */
function bindLaunch(
  host: FaultEngineHost,
  chunk: KernelChunk,
  space: DevicePageTable,
  bufs: LaunchBuffers,
): GPUBindGroup {
  const w = pteWindow(host, chunk);
  const frames = host.pool.buffers;
  const entries: GPUBindGroupEntry[] = [
    { binding: 0, resource: { buffer: bufs.params } },
    { binding: 1, resource: { buffer: space.pte, offset: w.base * 4, size: w.pages * 4 } },
    { binding: 2, resource: { buffer: bufs.faults } },
    { binding: 3, resource: { buffer: bufs.progress } },
    { binding: 4, resource: { buffer: bufs.out } },
  ];
  for (let b = 0; b < 4; b++) {
    const resource = frames[b] ? { buffer: frames[b] } : { buffer: bufs.dummy, offset: 256 * b, size: 16 };
    entries.push({ binding: 5 + b, resource });
  }
  return host.gpu.device.createBindGroup({ label: 'device kernel', layout: host.kernels.layout, entries });
}

/**
 * One launch: write its parameters (its stamp), clear the fault header and the counts of the
 * chunk's pages (and, at the chunk's first launch, its progress and output), dispatch, then read
 * back in one mapAsync the header, the first entries, the per-page raw counts, the chunk's PTEs
 * (whose DIRTY bits the host keeps, so a lost device can name what it held) and the pass's GPU
 * timestamps. Returns the faults coalesced (one per page, in page order) and the raw count.
 */
async function launch(
  host: FaultEngineHost,
  plan: KernelPlan,
  chunk: KernelChunk,
  space: DevicePageTable,
  bind: GPUBindGroup,
  run: RunState,
  launchNo: number,
): Promise<{ faults: DeviceFault[]; raw: number; gpuMs?: number }> {
  const g = host.gpu;
  const d = g.device;
  const bufs = run.bufs;
  const layout = run.faultLayout;
  const p0 = chunk.firstPage;
  const pages = chunk.lastPage - chunk.firstPage + 1;
  const entryWords = 2 * Math.min(layout.cap, FIRST_READ_ENTRIES);
  const w = pteWindow(host, chunk);
  const staging = bufs.readback;
  const readWords = 4 + entryWords + 3 * pages;
  const tsAt = Math.ceil((readWords * 4) / 8) * 8;
  if (host.inject.should_fail('kernel-launch')) {
    throw injectedError(
      'kernel-launch',
      new HmmlabError('EGPU', `launch ${plan.kind}: the GPU refused the dispatch`),
    );
  }
  // The device is destroyed at this launch (permanent): what follows meets a lost device.
  if (host.inject.should_fail('device-lost')) g.destroy();
  host.flushCopies(); // the copies the last service staged reach the frames first
  await g.scoped(`launch ${plan.kind}`, () => {
    const words = encodeParams(plan, chunk, {
      pageWords: plan.pageWords,
      framesPerBuffer: host.pool.framesPerBuffer,
      pteBase: w.base,
      ptePages: w.pages,
      faultCap: layout.cap,
      countsBase: layout.countsBase,
      launch: launchNo,
    });
    d.queue.writeBuffer(bufs.params, 0, words);
    const enc = d.createCommandEncoder({ label: `launch ${plan.kind}` });
    if (launchNo === 1) {
      // New work: nothing done yet, and the checksum's sums start at 0.
      enc.clearBuffer(bufs.progress, 0, chunk.slots * 4);
      if (chunk.outWords) enc.clearBuffer(bufs.out, 0, chunk.outWords * 4);
    }
    enc.clearBuffer(bufs.faults, 0, 16);
    enc.clearBuffer(bufs.faults, layout.countsBase * 4, 2 * pages * 4);
    const ts = bufs.timestamps;
    const pass = enc.beginComputePass({
      label: plan.kind,
      timestampWrites: ts
        ? { querySet: ts.set, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 }
        : undefined,
    });
    pass.setPipeline(host.kernels.pipeline(plan.kind));
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(chunk.threads / 256);
    pass.end();
    enc.copyBufferToBuffer(bufs.faults, 0, staging, 0, (4 + entryWords) * 4);
    enc.copyBufferToBuffer(bufs.faults, layout.countsBase * 4, staging, (4 + entryWords) * 4, 2 * pages * 4);
    enc.copyBufferToBuffer(space.pte, p0 * 4, staging, (4 + entryWords + 2 * pages) * 4, pages * 4);
    if (ts) {
      enc.resolveQuerySet(ts.set, 0, 2, ts.resolve, 0);
      enc.copyBufferToBuffer(ts.resolve, 0, staging, tsAt, 16);
    }
    d.queue.submit([enc.finish()]);
  });
  const mapBytes = Math.ceil((bufs.timestamps ? tsAt + 16 : readWords * 4) / 8) * 8;
  await g.map(staging, GPUMapMode.READ, 0, mapBytes);
  const mapped = staging.getMappedRange(0, mapBytes);
  const w32 = new Uint32Array(mapped.slice(0, readWords * 4));
  let gpuMs: number | undefined;
  if (bufs.timestamps) {
    const t = new BigUint64Array(mapped.slice(tsAt, tsAt + 16));
    gpuMs = t[1] > t[0] ? Number(t[1] - t[0]) / 1e6 : 0;
  }
  staging.unmap();
  const unique = w32[F_UNIQUE];
  const raw = w32[F_RAW];
  if (w32[F_OVERFLOW] !== 0) {
    throw new HmmlabError(
      'EGPU',
      `device fault buffer of space ${space.id} overflowed (${w32[F_OVERFLOW]} entries lost)`,
    );
  }
  const counts = w32.subarray(4 + entryWords, 4 + entryWords + 2 * pages);
  const ptes = w32.subarray(4 + entryWords + 2 * pages);
  ptes.forEach((pte, i) => {
    // Only for a page still installed: a revoke that ran after the launch took its bits already.
    const e = space.entries.get(p0 + i);
    if (!e) return;
    if (pteDirty(pte) && e.perm === 'rw') space.dirty.add(p0 + i);
    else space.dirty.delete(p0 + i);
    host.pool.touch(e.frame);
  });
  let entries: Uint32Array = w32.subarray(4, 4 + 2 * Math.min(unique, entryWords / 2));
  if (unique > entryWords / 2) {
    const more = await g.readBuffer(bufs.faults, 16, unique * 8);
    entries = new Uint32Array(more.buffer, more.byteOffset, unique * 2);
  }
  const rawCount = (index: number, write: boolean) =>
    index >= p0 && index < p0 + pages ? counts[2 * (index - p0) + (write ? 1 : 0)] : 1;
  const parsed = parseFaultEntries(entries, unique, rawCount);
  return { faults: coalesceFaults(parsed), raw, gpuMs };
}

/** What one serviceBatch did: its record, and the pages whose grant was installed. */
interface BatchOutcome {
  rec: FaultBatchRecord;
  granted: number[];
}

/** Service one batch under the mmu_interval sequence; install what was granted and not raced. */
async function serviceBatch(
  host: FaultEngineHost,
  kind: KernelKind | 'prefetch',
  space: DevicePageTable,
  batch: DeviceFault[],
  servicer: FaultServicer,
  failedPages: Map<string, FailedAccess> | null,
  at: { chunk: number; launch: number; batch: number },
): Promise<BatchOutcome> {
  const c = host.counters;
  const before = { ...c };
  const t0 = performance.now();
  const prefetch = kind === 'prefetch';
  // Frames of the batch's pages must not be evicted while the batch is serviced.
  const pinned: number[] = [];
  for (const f of batch) {
    const e = space.entries.get(f.index);
    if (e) {
      host.pool.pin(e.frame);
      pinned.push(e.frame);
    }
  }
  const allocated = new Set<number>();
  /** Pages whose grant the servicer registered (ctx.grant): space.pending holds what is left of it. */
  const registered = new Set<number>();
  let failed = 0;
  let retried = 0;
  const granted: number[] = [];
  let deferred: { error: unknown } | undefined;
  const ctx: FaultServiceContext = {
    space,
    cause: prefetch ? 'prefetch' : 'fault',
    lookup: (index) => space.entries.get(index) ?? space.pending.get(index),
    allocFrames: async (indices) => {
      const frames = await host.allocFrames(space, indices);
      for (const f of frames) if (f !== null) allocated.add(f);
      return frames;
    },
    copyToFrames: (items) => host.stageToFrames(items),
    fail: (error) => {
      deferred ??= { error };
    },
    grant: (index, frame, perm) => {
      registered.add(index);
      space.pending.set(index, { frame, perm });
    },
  };
  try {
    const seq = space.readBegin();
    const results = await servicer(batch, ctx);
    if (results.length !== batch.length) {
      throw new HmmlabError('EINVAL', `fault servicer answered ${results.length} of ${batch.length} faults`);
    }
    const installs: MapEntry[] = [];
    const fails: DeviceFault[] = [];
    // The batch's staged copies reach the frames before its PTEs (and go on while the next batch
    // is serviced).
    host.flushCopies();
    // mmu_interval_read_retry and the install under the page-table lock: an invalidation of a page
    // of the batch ran before this (it is seen) or runs after the install (it invalidates the PTE).
    await space.lock.run(async () => {
      if (host.inject.should_fail('race-invalidate')) {
        // As a CPU write to a page of the batch would, between the start of service and the install.
        const k = results.findIndex((r) => r.ok);
        space.invalidate([batch[Math.max(0, k)].index]);
      }
      const raced = space.readRetry(
        seq,
        batch.map((f) => f.index),
      );
      batch.forEach((f, i) => {
        const r = results[i];
        // A registered grant is what an invalidation since left of it; none left: it was revoked
        // (its frame went with it), and the access faults again.
        const g = r.ok && registered.has(f.index) ? space.pending.get(f.index) : r.ok ? r : undefined;
        if (r.ok && !g) {
          allocated.delete(r.frame);
          retried++;
          c.mmuIntervalRetries++;
        } else if (g && !raced.has(f.index)) {
          installs.push({ index: f.index, frame: g.frame, perm: g.perm as 'ro' | 'rw' });
        } else if (g) {
          // mmu_interval_read_retry said no: not installed now; the grant stands (the servicer's
          // records name the frame) and the replay faults the page again and installs it.
          space.pending.set(f.index, { frame: g.frame, perm: g.perm });
          allocated.delete(g.frame);
          retried++;
          c.mmuIntervalRetries++;
        } else if (!r.ok && 'retry' in r) {
          retried++;
        } else if (!r.ok) {
          failed++;
          fails.push(f);
          const key = `${f.index}${f.write ? 'w' : 'r'}`;
          if (failedPages && !failedPages.has(key)) {
            failedPages.set(key, {
              space: space.id,
              index: f.index,
              write: f.write,
              code: r.code,
              message: r.message,
              items: 0,
            });
          }
        }
      });
      await host.mapLocked(space, installs);
      space.installedAt = space.readBegin();
    });
    for (const e of installs) {
      allocated.delete(e.frame);
      space.pending.delete(e.index);
      granted.push(e.index);
    }
    // A refusal holds for the rest of a kernel run (its FAIL bit); a prefetch only reports it.
    if (fails.length && !prefetch) await host.markFailed(space, fails, true);
  } finally {
    // The service is over: no sequence it took can be asked about again.
    space.forgetInvalidations();
    for (const f of pinned) host.pool.unpin(f);
    // Frames taken for faults that were refused, left for later or never answered go back.
    if (allocated.size) host.freeFrames([...allocated]);
  }
  if (deferred) throw deferred.error;
  if (prefetch) {
    c.prefetchBatches++;
    c.prefetchPages += granted.length;
  } else {
    c.faultsFailed += failed;
    c.faultsRetried += retried;
    c.batches++;
  }
  const serviceMs = performance.now() - t0;
  c.serviceMs += serviceMs;
  const raw = batch.reduce((s, f) => s + f.raw, 0);
  return {
    granted,
    rec: {
      kernel: kind,
      space: space.id,
      ...at,
      faultsRaw: raw,
      faultsDuplicate: raw - batch.length,
      faultsUnique: batch.length,
      read: batch.filter((f) => !f.write).length,
      write: batch.filter((f) => f.write).length,
      failed,
      retried,
      bytesHostToDevice: c.bytesHostToDevice - before.bytesHostToDevice,
      bytesDeviceToHost: c.bytesDeviceToHost - before.bytesDeviceToHost,
      serviceMs,
      copyMs: c.copyMs - before.copyMs,
      fetchMs: 0,
      launchGpuMs: 0,
    },
  };
}

/** What a prefetch did. */
export interface PrefetchResult {
  /** Pages asked for that needed service, and those granted and installed. */
  pages: number;
  granted: number;
  /** Pages refused (page_mkwrite said no to a write prefetch): left as they were. */
  refused: { index: number; code: Errno; message: string }[];
  batches: FaultBatchRecord[];
  ms: number;
}

/** Rounds of retries a prefetch gives pages that found no frame (others pinned them) before leaving them. */
const PREFETCH_ROUNDS = 4;

/**
 * Prefetch (cudaMemPrefetchAsync; UVM's uvm_migrate, MAKE_RESIDENT_AND_MAP to a GPU): the pages of
 * `requests` serviced by the owner's servicer as faults would be, batch by batch, and mapped, with
 * no kernel. A page left for later (no frame, a raced install) is serviced again, a few rounds at
 * most; a raced grant is installed at the end; a refused one is reported, not thrown.
 */
export async function prefetchPages(
  host: FaultEngineHost,
  space: DevicePageTable,
  requests: { index: number; write: boolean }[],
  servicer: FaultServicer,
): Promise<PrefetchResult> {
  const t0 = performance.now();
  const c = host.counters;
  c.prefetches++;
  const batches: FaultBatchRecord[] = [];
  const refused = new Map<number, { index: number; code: Errno; message: string }>();
  let granted = 0;
  if (requests.length) space.ensureCapacity(Math.max(...requests.map((r) => r.index)) + 1);
  let todo: DeviceFault[] = coalesceFaults(requests.map((r) => ({ ...r, thread: 0, raw: 0 })));
  const pages = todo.length;
  const batchSize = Math.min(host.batchSize, host.pool.devicePages);
  try {
    for (let round = 0; todo.length && round < PREFETCH_ROUNDS; round++) {
      const failed = new Map<string, FailedAccess>();
      const next: DeviceFault[] = [];
      for (const batch of faultBatches(todo, batchSize)) {
        const { rec, granted: g } = await serviceBatch(host, 'prefetch', space, batch, servicer, failed, {
          chunk: 0,
          launch: 0,
          batch: batches.length,
        });
        batches.push(rec);
        host.logBatch(rec);
        granted += g.length;
        const done = new Set(g);
        for (const f of batch) {
          if (!done.has(f.index) && !failed.has(`${f.index}${f.write ? 'w' : 'r'}`)) next.push(f);
        }
      }
      for (const f of failed.values())
        refused.set(f.index, { index: f.index, code: f.code, message: f.message });
      // A raced grant stays pending: installed below, not serviced again.
      todo = next.filter((f) => !space.pending.has(f.index));
    }
  } finally {
    const pending = space.pending.size;
    await installPending(host, space);
    granted += pending - space.pending.size;
  }
  return { pages, granted, refused: [...refused.values()], batches, ms: performance.now() - t0 };
}

/**
 * Failed words per refused page: within a launch a page's words all translate alike, so a page
 * whose access was refused had every word of it in the range undone, in the one chunk it is in.
 */
function countFailedWords(plan: KernelPlan, failed: Map<string, FailedAccess>): void {
  const end = plan.firstWord + plan.items;
  for (const f of failed.values()) {
    f.items =
      Math.min(end, (f.index + 1) * plan.pageWords) - Math.max(plan.firstWord, f.index * plan.pageWords);
  }
}

/** atomic: count the chunk's refused logical threads per page (one readback of its progress). */
async function countFailedThreads(
  g: GpuDevice,
  plan: KernelPlan,
  chunk: KernelChunk,
  run: RunState,
): Promise<void> {
  const bytes = await g.readBuffer(run.bufs.progress, 0, chunk.items * 4);
  const progress = new Uint32Array(bytes.buffer, bytes.byteOffset, chunk.items);
  const w0 = plan.firstWord % plan.pageWords;
  for (let i = 0; i < chunk.items; i++) {
    if ((progress[i] & 0x8000_0000) === 0) continue;
    const step = progress[i] & 0x7fff_ffff;
    const word = w0 + (((chunk.itemBase + i) * plan.spread + step) % plan.nwords);
    const index = plan.firstPage + Math.floor(word / plan.pageWords);
    const f = run.failedPages.get(`${index}w`);
    if (f) f.items++;
  }
}

function failedError(kind: KernelKind, failed: FailedAccess[]): HmmlabError {
  const parts = failed.map(
    (f) => `page ${f.index} (${f.write ? 'write' : 'read'}, ${f.items} items): ${f.code} ${f.message}`,
  );
  return new HmmlabError(
    failed[0].code === 'EFAULT' ? 'EFAULT' : failed[0].code,
    `device kernel ${kind} on space ${failed[0].space}: access refused (SIGBUS): ${parts.join('; ')}`,
  );
}
