/**
 * Fault service and replay: launch a kernel, read back the fault buffer (a small readback), coalesce,
 * service the faults in batches through the owner's servicer, install the PTEs it grants (unless an
 * invalidation raced: mmu_interval_read_retry), and replay the unfinished work until all is done.
 * An access the servicer refuses (EFAULT: page_mkwrite said no) gets the PTE's FAIL bit for the rest
 * of the run: its work is marked failed, not retried, and reported naming the page, while the other
 * threads' work lands.
 *
 * An op of any size runs in chunks (kernels.ts planChunks: whole pages, at most the device's
 * chunkBytes of work), one after the other, each with its own launch/service/replay loop, so that
 * a launch's buffers fit the binding limits and a run holds buffers for one chunk, not for the op:
 * progress (a launch stamp per page), the fault buffer (counts of the chunk's pages), the output
 * (read back, or handed to a sink, after each chunk) and the window of the page table it binds.
 */
import { type Errno, HmmlabError } from '../errors.ts';
import { injectedError } from '../inject/inject.ts';
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
import {
  encodeParams,
  isThreadKernel,
  type KernelChunk,
  type KernelKind,
  type KernelParams,
  type KernelPlan,
  PARAMS_BYTES,
  planChunks,
  planKernel,
} from './kernels.ts';
import type { DeviceMemory, MapEntry } from './memory.ts';
import type { DevicePageTable, InstalledPte } from './pagetable.ts';
import { pteDirty } from './pte.ts';
import { type DeviceCounters, diffCounters, type FaultBatchRecord } from './stats.ts';

/** What the servicer gets besides the faults. */
export interface FaultServiceContext {
  readonly memory: DeviceMemory;
  readonly space: DevicePageTable;
  /**
   * The page's frame and permission: as installed, or as granted by an earlier service whose install
   * lost a race (pending: the replay installs it). A permission upgrade reuses the frame.
   */
  lookup(index: number): InstalledPte | undefined;
  /** Frames for these pages (allocFrames); null where none could be had. Unused ones are freed after. */
  allocFrames(indices: number[]): Promise<(number | null)[]>;
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
}

/** The run's buffers, each sized for its largest chunk: nothing here grows with the op. */
interface LaunchBuffers {
  params: GPUBuffer;
  progress: GPUBuffer;
  out: GPUBuffer;
  dummy: GPUBuffer;
  /** The fault buffer (fault.ts) for the chunk's pages: counts are kept from the chunk's first page. */
  faults: GPUBuffer;
  faultLayout: FaultLayout;
  /** The launch's readback: fault header, first entries, raw counts and PTEs of the chunk's pages. */
  readback: GPUBuffer;
  /** The output's readback and its host copy, made at the first chunk with output, reused after. */
  outReadback?: GPUBuffer;
  outHost?: Uint8Array;
}

/** A chunk's place in the run, for the fault loop and the batch records. */
interface RunState {
  plan: KernelPlan;
  bufs: LaunchBuffers;
  failedPages: Map<string, FailedAccess>;
  batches: FaultBatchRecord[];
  launchMs: number[];
  launches: number;
}

export async function runKernel(
  dm: DeviceMemory,
  kind: KernelKind,
  space: DevicePageTable,
  params: KernelParams,
  servicer: FaultServicer,
  sink?: DeviceOutputSink,
): Promise<KernelResult> {
  const t0 = performance.now();
  const before = { ...dm.counters };
  const plan = planKernel(kind, params, dm.pageSize);
  space.ensureCapacity(plan.lastPage + 1);
  const bufs = createLaunchBuffers(dm, plan);
  const run: RunState = { plan, bufs, failedPages: new Map(), batches: [], launchMs: [], launches: 0 };
  // Without a sink, the caller asked for the op's bytes whole.
  const bytes = kind === 'devread' && !sink ? new Uint8Array(plan.items * 4) : undefined;
  const checksums: KernelResult['checksums'] = kind === 'checksum' ? [] : undefined;
  let chunks = 0;
  let threads = 0;
  let finished = false;
  try {
    for (const chunk of planChunks(plan, dm.chunkBytes)) {
      threads ||= chunk.threads;
      await runChunk(dm, space, chunk, servicer, run);
      chunks++;
      dm.counters.chunks++;
      if (chunk.outWords) {
        const out = await readChunkOutput(dm, bufs, chunk.outWords * 4);
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
      if (isThreadKernel(kind) && run.failedPages.size) await countFailedThreads(dm, plan, chunk, run);
    }
    dm.counters.kernels++;
    const result: KernelResult = {
      kind,
      space: space.id,
      threads,
      items: plan.items,
      chunks,
      launches: run.launches,
      replays: run.launches - chunks,
      counters: diffCounters(dm.counters, before),
      batches: run.batches,
      failed: [],
      bytes,
      checksums,
      ms: 0,
      launchMs: run.launchMs,
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
    if (space.pending.size && !dm.gpu.lost) {
      const entries = [...space.pending].map(([index, e]) => ({
        index,
        frame: e.frame,
        perm: e.perm as 'ro' | 'rw',
      }));
      await dm.map(space, entries).catch(() => {});
    }
    // A refusal holds for this run only: the next run asks the servicer again.
    if (run.failedPages.size && !dm.gpu.lost) {
      const clear = dm.markFailed(space, [...run.failedPages.values()], false);
      // On the error path, the run's own error is the one to report.
      await (finished ? clear : clear.catch(() => {}));
    }
    for (const b of [bufs.params, bufs.progress, bufs.out, bufs.dummy, bufs.faults, bufs.readback])
      b.destroy();
  }
}

/**
 * One chunk's fault/replay loop: launch, service the faults in batches, replay until no work is
 * left undone (refused work is failed, not undone). The chunks before it are done and stay so
 * whatever happens to this one: a launch that fails here leaves their pages as they were serviced.
 */
async function runChunk(
  dm: DeviceMemory,
  space: DevicePageTable,
  chunk: KernelChunk,
  servicer: FaultServicer,
  run: RunState,
): Promise<void> {
  const { plan, bufs } = run;
  let bind = bindLaunch(dm, chunk, space, bufs);
  let boundPte = space.pte;
  let lastSignature = '';
  let stuck = 0;
  let lastGrantedAll = false;
  /** The space's invalidation sequence at the last install: a CPU path that took a page back since is progress too. */
  let seqAtInstall = -1;
  for (let launchNo = 1; ; launchNo++) {
    if (space.pte !== boundPte) {
      // The servicer mapped a page past the table's end: the table grew, bind the new buffers.
      bind = bindLaunch(dm, chunk, space, bufs);
      boundPte = space.pte;
    }
    if (launchNo > dm.maxLaunches) {
      throw new HmmlabError(
        'EGPU',
        `device kernel ${plan.kind}: work unfinished after ${dm.maxLaunches} launches (fault loop)` +
          (chunk.index > 0 ? ` in chunk ${chunk.index + 1}` : ''),
      );
    }
    const tl = performance.now();
    const faults = await launch(dm, plan, chunk, space, bind, bufs, launchNo);
    const lms = performance.now() - tl;
    run.launchMs.push(lms);
    dm.counters.launchMs += lms;
    run.launches++;
    dm.counters.launches++;
    if (launchNo > 1) dm.counters.replays++;
    if (faults.length === 0) return;
    // The same faults again although the last service granted each one and evicted nothing: the
    // servicer's answer does not let the access through, and replaying would never end.
    const signature = faults.map((f) => `${f.index}${f.write ? 'w' : 'r'}`).join(',');
    // Unless an invalidation ran since (a concurrent CPU path took a page back: it faults again).
    const untouched = space.readBegin() === seqAtInstall;
    stuck = signature === lastSignature && lastGrantedAll && untouched ? stuck + 1 : 0;
    lastSignature = signature;
    if (stuck >= 3) {
      throw new HmmlabError(
        'EGPU',
        `device kernel ${plan.kind}: no progress: pages ${formatPages(faults.map((f) => f.index))} of space ${space.id} ` +
          `fault again after every service (${run.launches} launches)`,
      );
    }
    const batchSize = Math.min(dm.batchSize, dm.pool.devicePages);
    const evictionsBefore = dm.counters.evictions;
    let granted = 0;
    for (const batch of faultBatches(faults, batchSize)) {
      const rec = await serviceBatch(dm, plan.kind, space, batch, servicer, run.failedPages, {
        chunk: chunk.index,
        launch: run.launches,
        batch: run.batches.length,
      });
      run.batches.push(rec);
      dm.logBatch(rec);
      granted += rec.faultsUnique - rec.failed - rec.retried;
    }
    lastGrantedAll = granted === faults.length && dm.counters.evictions === evictionsBefore;
    seqAtInstall = space.installedAt;
  }
}

function createLaunchBuffers(dm: DeviceMemory, plan: KernelPlan): LaunchBuffers {
  let slots = 1;
  let outWords = 1;
  let span = 1;
  for (const c of planChunks(plan, dm.chunkBytes)) {
    slots = Math.max(slots, c.slots);
    outWords = Math.max(outWords, c.outWords);
    span = Math.max(span, c.lastPage - c.firstPage + 1);
  }
  const g = dm.gpu;
  const storage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const layout = faultLayout(span);
  const entryWords = 2 * Math.min(layout.cap, FIRST_READ_ENTRIES);
  const made: GPUBuffer[] = [];
  const make = (label: string, bytes: number, usage: number) => {
    const b = g.createBuffer(`${plan.kind}-${label}`, bytes, usage);
    made.push(b);
    return b;
  };
  try {
    return {
      params: make('params', PARAMS_BYTES, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST),
      progress: make('progress', slots * 4, storage),
      out: make('out', outWords * 4, storage),
      // Unused frame bindings get disjoint slices of one small buffer (writable bindings may not alias).
      dummy: make('frames-unused', 256 * 4, storage),
      faults: make('faults', layout.words * 4, storage),
      faultLayout: layout,
      readback: make(
        'fault-readback',
        (4 + entryWords + 3 * span) * 4,
        GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      ),
    };
  } catch (e) {
    for (const b of made) b.destroy();
    throw e;
  }
}

/**
 * A chunk's output, read back through one staging buffer and one host buffer for the whole run
 * (a view, valid until the next chunk's): a devread of gigabytes allocates them once.
 */
async function readChunkOutput(dm: DeviceMemory, bufs: LaunchBuffers, bytes: number): Promise<Uint8Array> {
  const g = dm.gpu;
  const size = bufs.out.size;
  bufs.outReadback ??= g.createBuffer(
    'out-readback',
    size,
    GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  );
  bufs.outHost ??= new Uint8Array(size);
  const enc = g.device.createCommandEncoder({ label: 'output readback' });
  enc.copyBufferToBuffer(bufs.out, 0, bufs.outReadback, 0, bytes);
  g.device.queue.submit([enc.finish()]);
  await g.map(bufs.outReadback, GPUMapMode.READ, 0, bytes);
  bufs.outHost.set(new Uint8Array(bufs.outReadback.getMappedRange(0, bytes)));
  bufs.outReadback.unmap();
  return bufs.outHost.subarray(0, bytes);
}

/** The PTE window a chunk binds: from its first page rounded down to the offset alignment. */
function pteWindow(dm: DeviceMemory, chunk: KernelChunk): { base: number; pages: number } {
  const align = Math.max(1, dm.gpu.limits.minStorageBufferOffsetAlignment / 4);
  const base = Math.floor(chunk.firstPage / align) * align;
  return { base, pages: chunk.lastPage - base + 1 };
}

/** Bind the chunk's window of the page table, the fault buffer, progress, output and frames. */
function bindLaunch(
  dm: DeviceMemory,
  chunk: KernelChunk,
  space: DevicePageTable,
  bufs: LaunchBuffers,
): GPUBindGroup {
  const w = pteWindow(dm, chunk);
  const frames = dm.pool.buffers;
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
  return dm.gpu.device.createBindGroup({ label: 'device kernel', layout: dm.kernels.layout, entries });
}

/**
 * One launch: write its parameters (its stamp), clear the fault header and the counts of the
 * chunk's pages (and, at the chunk's first launch, its progress and output), dispatch, then read
 * back in one mapAsync the header, the first entries, the per-page raw counts and the chunk's PTEs
 * (whose DIRTY bits the host keeps, so a lost device can name what it held).
 */
async function launch(
  dm: DeviceMemory,
  plan: KernelPlan,
  chunk: KernelChunk,
  space: DevicePageTable,
  bind: GPUBindGroup,
  bufs: LaunchBuffers,
  launchNo: number,
): Promise<DeviceFault[]> {
  const g = dm.gpu;
  const d = g.device;
  const layout = bufs.faultLayout;
  const p0 = chunk.firstPage;
  const pages = chunk.lastPage - chunk.firstPage + 1;
  const entryWords = 2 * Math.min(layout.cap, FIRST_READ_ENTRIES);
  const w = pteWindow(dm, chunk);
  const staging = bufs.readback;
  if (dm.inject.should_fail('kernel-launch')) {
    throw injectedError(
      'kernel-launch',
      new HmmlabError('EGPU', `launch ${plan.kind}: the GPU refused the dispatch`),
    );
  }
  // The device is destroyed at this launch (permanent): what follows meets a lost device.
  if (dm.inject.should_fail('device-lost')) g.destroy();
  await g.scoped(`launch ${plan.kind}`, () => {
    const words = encodeParams(plan, chunk, {
      pageWords: plan.pageWords,
      framesPerBuffer: dm.pool.framesPerBuffer,
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
    const pass = enc.beginComputePass({ label: plan.kind });
    pass.setPipeline(dm.kernels.pipeline(plan.kind));
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(chunk.threads / 256);
    pass.end();
    enc.copyBufferToBuffer(bufs.faults, 0, staging, 0, (4 + entryWords) * 4);
    enc.copyBufferToBuffer(bufs.faults, layout.countsBase * 4, staging, (4 + entryWords) * 4, 2 * pages * 4);
    enc.copyBufferToBuffer(space.pte, p0 * 4, staging, (4 + entryWords + 2 * pages) * 4, pages * 4);
    d.queue.submit([enc.finish()]);
  });
  await g.map(staging, GPUMapMode.READ);
  const readWords = 4 + entryWords + 3 * pages;
  const w32 = new Uint32Array(staging.getMappedRange(0, readWords * 4).slice(0));
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
    dm.pool.touch(e.frame);
  });
  let entries: Uint32Array = w32.subarray(4, 4 + 2 * Math.min(unique, entryWords / 2));
  if (unique > entryWords / 2) {
    const more = await g.readBuffer(bufs.faults, 16, unique * 8);
    entries = new Uint32Array(more.buffer, more.byteOffset, unique * 2);
  }
  const rawCount = (index: number, write: boolean) =>
    index >= p0 && index < p0 + pages ? counts[2 * (index - p0) + (write ? 1 : 0)] : 1;
  const parsed = parseFaultEntries(entries, unique, rawCount);
  const faults = coalesceFaults(parsed);
  const c = dm.counters;
  c.faultsRaw += raw;
  c.faultsUnique += faults.length;
  c.faultsDuplicate += raw - faults.length;
  for (const f of faults) {
    if (f.write) c.faultsWrite++;
    else c.faultsRead++;
  }
  return faults;
}

/** Service one batch under the mmu_interval sequence; install what was granted and not raced. */
async function serviceBatch(
  dm: DeviceMemory,
  kind: KernelKind,
  space: DevicePageTable,
  batch: DeviceFault[],
  servicer: FaultServicer,
  failedPages: Map<string, FailedAccess>,
  at: { chunk: number; launch: number; batch: number },
): Promise<FaultBatchRecord> {
  const c = dm.counters;
  const before = { ...c };
  const t0 = performance.now();
  // Frames of the batch's pages must not be evicted while the batch is serviced.
  const pinned: number[] = [];
  for (const f of batch) {
    const e = space.entries.get(f.index);
    if (e) {
      dm.pool.pin(e.frame);
      pinned.push(e.frame);
    }
  }
  const allocated = new Set<number>();
  /** Pages whose grant the servicer registered (ctx.grant): space.pending holds what is left of it. */
  const granted = new Set<number>();
  let failed = 0;
  let retried = 0;
  let deferred: { error: unknown } | undefined;
  const ctx: FaultServiceContext = {
    memory: dm,
    space,
    lookup: (index) => space.entries.get(index) ?? space.pending.get(index),
    allocFrames: async (indices) => {
      const frames = await dm.allocFrames(space, indices);
      for (const f of frames) if (f !== null) allocated.add(f);
      return frames;
    },
    fail: (error) => {
      deferred ??= { error };
    },
    grant: (index, frame, perm) => {
      granted.add(index);
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
    // mmu_interval_read_retry and the install under the page-table lock: an invalidation of a page
    // of the batch ran before this (it is seen) or runs after the install (it invalidates the PTE).
    await space.lock.run(async () => {
      if (dm.inject.should_fail('race-invalidate')) {
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
        const g = r.ok && granted.has(f.index) ? space.pending.get(f.index) : r.ok ? r : undefined;
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
          if (!failedPages.has(key)) {
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
      await dm.mapLocked(space, installs);
      space.installedAt = space.readBegin();
    });
    for (const e of installs) {
      allocated.delete(e.frame);
      space.pending.delete(e.index);
    }
    if (fails.length) await dm.markFailed(space, fails, true);
  } finally {
    // The service is over: no sequence it took can be asked about again.
    space.forgetInvalidations();
    for (const f of pinned) dm.pool.unpin(f);
    // Frames taken for faults that were refused, left for later or never answered go back.
    if (allocated.size) dm.freeFrames([...allocated]);
  }
  if (deferred) throw deferred.error;
  c.faultsFailed += failed;
  c.faultsRetried += retried;
  c.batches++;
  const serviceMs = performance.now() - t0;
  c.serviceMs += serviceMs;
  const raw = batch.reduce((s, f) => s + f.raw, 0);
  return {
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
  };
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
  dm: DeviceMemory,
  plan: KernelPlan,
  chunk: KernelChunk,
  run: RunState,
): Promise<void> {
  const bytes = await dm.gpu.readBuffer(run.bufs.progress, 0, chunk.items * 4);
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
