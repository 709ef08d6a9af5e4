/**
 * Fault service and replay: launch a kernel, read back the fault buffer (a small readback), coalesce,
 * service the faults in batches through the owner's servicer, install the PTEs it grants (unless an
 * invalidation raced: mmu_interval_read_retry), and replay the unfinished work until all is done.
 * An access the servicer refuses (EFAULT: page_mkwrite said no) gets the PTE's FAIL bit for the rest
 * of the run: its work is marked failed, not retried, and reported naming the page, while the other
 * threads' work lands.
 */
import { type Errno, HmmlabError } from '../errors.ts';
import { injectedError } from '../inject/inject.ts';
import {
  coalesceFaults,
  type DeviceFault,
  F_OVERFLOW,
  F_RAW,
  F_UNIQUE,
  FIRST_READ_ENTRIES,
  faultBatches,
  faultLayout,
  formatPages,
  parseFaultEntries,
} from './fault.ts';
import { encodeParams, type KernelKind, type KernelParams, type KernelPlan, planKernel } from './kernels.ts';
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

export interface KernelResult {
  kind: KernelKind;
  space: number;
  /** Invocations per launch, and work items. */
  threads: number;
  items: number;
  launches: number;
  replays: number;
  /** What this run cost (counters after - before; concurrent work on the device counts too). */
  counters: DeviceCounters;
  batches: FaultBatchRecord[];
  failed: FailedAccess[];
  /** The SIGBUS-like error for the failed accesses, if any (not thrown: the other work landed). */
  error?: HmmlabError;
  /** devread: the bytes read. */
  bytes?: Uint8Array;
  /** checksum: per page of the range, wrapping sum and xor of its words (within the range). */
  checksums?: { index: number; sum: number; xor: number }[];
  /** Wall time of the run, ms; and of each launch (dispatch to fault readback), first launch first. */
  ms: number;
  launchMs: number[];
}

interface LaunchBuffers {
  params: GPUBuffer;
  progress: GPUBuffer;
  out: GPUBuffer;
  dummy: GPUBuffer;
}

export async function runKernel(
  dm: DeviceMemory,
  kind: KernelKind,
  space: DevicePageTable,
  params: KernelParams,
  servicer: FaultServicer,
): Promise<KernelResult> {
  const t0 = performance.now();
  const before = { ...dm.counters };
  const plan = planKernel(kind, params, dm.pageSize);
  space.ensureCapacity(plan.lastPage + 1);
  const bufs = createLaunchBuffers(dm, plan);
  const failedPages = new Map<string, FailedAccess>();
  const batches: FaultBatchRecord[] = [];
  let launches = 0;
  const launchMs: number[] = [];
  let lastSignature = '';
  let stuck = 0;
  let lastGrantedAll = false;
  let finished = false;
  try {
    let bind = bindLaunch(dm, plan, space, bufs);
    let boundPte = space.pte;
    for (;;) {
      if (space.pte !== boundPte) {
        // The servicer mapped a page past the table's end: the table grew, bind the new buffers.
        bind = bindLaunch(dm, plan, space, bufs);
        boundPte = space.pte;
      }
      if (launches >= dm.maxLaunches) {
        throw new HmmlabError(
          'EGPU',
          `device kernel ${kind}: work unfinished after ${launches} launches (fault loop)`,
        );
      }
      const tl = performance.now();
      const faults = await launch(dm, plan, space, bind);
      const lms = performance.now() - tl;
      launchMs.push(lms);
      dm.counters.launchMs += lms;
      launches++;
      dm.counters.launches++;
      if (launches > 1) dm.counters.replays++;
      if (faults.length === 0) break;
      // The same faults again although the last service granted each one and evicted nothing: the
      // servicer's answer does not let the access through, and replaying would never end.
      const signature = faults.map((f) => `${f.index}${f.write ? 'w' : 'r'}`).join(',');
      stuck = signature === lastSignature && lastGrantedAll ? stuck + 1 : 0;
      lastSignature = signature;
      if (stuck >= 3) {
        throw new HmmlabError(
          'EGPU',
          `device kernel ${kind}: no progress: pages ${formatPages(faults.map((f) => f.index))} of space ${space.id} ` +
            `fault again after every service (${launches} launches)`,
        );
      }
      const batchSize = Math.min(dm.batchSize, dm.pool.devicePages);
      const evictionsBefore = dm.counters.evictions;
      let granted = 0;
      for (const batch of faultBatches(faults, batchSize)) {
        const rec = await serviceBatch(
          dm,
          kind,
          space,
          batch,
          servicer,
          launches,
          batches.length,
          failedPages,
        );
        batches.push(rec);
        dm.logBatch(rec);
        granted += rec.faultsUnique - rec.failed - rec.retried;
      }
      lastGrantedAll = granted === faults.length && dm.counters.evictions === evictionsBefore;
    }
    dm.counters.kernels++;
    const result: KernelResult = {
      kind,
      space: space.id,
      threads: plan.threads,
      items: plan.items,
      launches,
      replays: launches - 1,
      counters: diffCounters(dm.counters, before),
      batches,
      failed: [],
      ms: 0,
      launchMs,
    };
    if (plan.outWords) await readOutput(dm, plan, bufs, result);
    if (failedPages.size) {
      await countFailedItems(dm, plan, bufs, failedPages);
      result.failed = [...failedPages.values()].sort((a, b) => a.index - b.index);
      result.error = failedError(kind, result.failed);
    }
    result.counters = diffCounters(dm.counters, before);
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
    if (failedPages.size && !dm.gpu.lost) {
      const clear = dm.markFailed(space, [...failedPages.values()], false);
      // On the error path, the run's own error is the one to report.
      await (finished ? clear : clear.catch(() => {}));
    }
    for (const b of Object.values(bufs)) b.destroy();
  }
}

function createLaunchBuffers(dm: DeviceMemory, plan: KernelPlan): LaunchBuffers {
  const g = dm.gpu;
  const storage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const params = g.createBuffer(`${plan.kind}-params`, 64, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
  const progress = g.createBuffer(`${plan.kind}-progress`, plan.items * 4, storage);
  const out = g.createBuffer(`${plan.kind}-out`, Math.max(plan.outWords, 1) * 4, storage);
  // Unused frame bindings get disjoint slices of one small buffer (writable bindings may not alias).
  const dummy = g.createBuffer('frames-unused', 256 * 4, storage);
  // New buffers are zero: progress starts "nothing done", out starts at 0 for the atomics.
  return { params, progress, out, dummy };
}

/** Write the launch parameters for the table's current size and bind its buffers. */
function bindLaunch(
  dm: DeviceMemory,
  plan: KernelPlan,
  space: DevicePageTable,
  bufs: LaunchBuffers,
): GPUBindGroup {
  const layout = faultLayout(space.capacity);
  const words = encodeParams(plan, {
    pageWords: dm.pageSize / 4,
    framesPerBuffer: dm.pool.framesPerBuffer,
    countsBase: layout.countsBase,
    faultCap: layout.cap,
    pages: space.capacity,
  });
  dm.gpu.device.queue.writeBuffer(bufs.params, 0, words);
  const frames = dm.pool.buffers;
  const entries: GPUBindGroupEntry[] = [
    { binding: 0, resource: { buffer: bufs.params } },
    { binding: 1, resource: { buffer: space.pte } },
    { binding: 2, resource: { buffer: space.faults } },
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
 * One launch: clear the fault header and the counters of the pages in range, dispatch, then read
 * back in one mapAsync the header, the first entries, the per-page raw counts and the range's PTEs
 * (whose DIRTY bits the host keeps, so a lost device can name what it held).
 */
async function launch(
  dm: DeviceMemory,
  plan: KernelPlan,
  space: DevicePageTable,
  bind: GPUBindGroup,
): Promise<DeviceFault[]> {
  const g = dm.gpu;
  const d = g.device;
  const layout = faultLayout(space.capacity);
  const p0 = plan.firstPage;
  const pages = plan.lastPage - plan.firstPage + 1;
  const entryWords = 2 * Math.min(layout.cap, FIRST_READ_ENTRIES);
  const readWords = 4 + entryWords + 2 * pages + pages;
  const staging = g.createBuffer(
    'fault-readback',
    readWords * 4,
    GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  );
  try {
    if (dm.inject.should_fail('kernel-launch')) {
      throw injectedError(
        'kernel-launch',
        new HmmlabError('EGPU', `launch ${plan.kind}: the GPU refused the dispatch`),
      );
    }
    // The device is destroyed at this launch (permanent): what follows meets a lost device.
    if (dm.inject.should_fail('device-lost')) g.destroy();
    await g.scoped(`launch ${plan.kind}`, () => {
      const enc = d.createCommandEncoder({ label: `launch ${plan.kind}` });
      enc.clearBuffer(space.faults, 0, 16);
      enc.clearBuffer(space.faults, (layout.countsBase + 2 * p0) * 4, 2 * pages * 4);
      const pass = enc.beginComputePass({ label: plan.kind });
      pass.setPipeline(dm.kernels.pipeline(plan.kind));
      pass.setBindGroup(0, bind);
      pass.dispatchWorkgroups(plan.threads / 256);
      pass.end();
      enc.copyBufferToBuffer(space.faults, 0, staging, 0, (4 + entryWords) * 4);
      enc.copyBufferToBuffer(
        space.faults,
        (layout.countsBase + 2 * p0) * 4,
        staging,
        (4 + entryWords) * 4,
        2 * pages * 4,
      );
      enc.copyBufferToBuffer(space.pte, p0 * 4, staging, (4 + entryWords + 2 * pages) * 4, pages * 4);
      d.queue.submit([enc.finish()]);
    });
    await g.map(staging, GPUMapMode.READ);
    const w = new Uint32Array(staging.getMappedRange().slice(0));
    staging.unmap();
    const unique = w[F_UNIQUE];
    const raw = w[F_RAW];
    if (w[F_OVERFLOW] !== 0) {
      throw new HmmlabError(
        'EGPU',
        `device fault buffer of space ${space.id} overflowed (${w[F_OVERFLOW]} entries lost)`,
      );
    }
    const counts = w.subarray(4 + entryWords, 4 + entryWords + 2 * pages);
    const ptes = w.subarray(4 + entryWords + 2 * pages);
    ptes.forEach((pte, i) => {
      if (pteDirty(pte)) space.dirty.add(p0 + i);
      else space.dirty.delete(p0 + i);
      const e = space.entries.get(p0 + i);
      if (e) dm.pool.touch(e.frame);
    });
    let entries: Uint32Array = w.subarray(4, 4 + 2 * Math.min(unique, entryWords / 2));
    if (unique > entryWords / 2) {
      const more = await g.readBuffer(space.faults, 16, unique * 8);
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
  } finally {
    staging.destroy();
  }
}

/** Service one batch under the mmu_interval sequence; install what was granted and not raced. */
async function serviceBatch(
  dm: DeviceMemory,
  kind: KernelKind,
  space: DevicePageTable,
  batch: DeviceFault[],
  servicer: FaultServicer,
  launchNo: number,
  batchNo: number,
  failedPages: Map<string, FailedAccess>,
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
  };
  try {
    const seq = space.readBegin();
    const results = await servicer(batch, ctx);
    if (results.length !== batch.length) {
      throw new HmmlabError('EINVAL', `fault servicer answered ${results.length} of ${batch.length} faults`);
    }
    if (dm.inject.should_fail('race-invalidate')) {
      // As a CPU write to a page of the batch would, between the start of service and the install.
      const k = results.findIndex((r) => r.ok);
      space.invalidate([batch[Math.max(0, k)].index]);
    }
    const raced = space.readRetry(
      seq,
      batch.map((f) => f.index),
    );
    const installs: MapEntry[] = [];
    const fails: DeviceFault[] = [];
    batch.forEach((f, i) => {
      const r = results[i];
      if (r.ok && !raced.has(f.index)) {
        installs.push({ index: f.index, frame: r.frame, perm: r.perm });
      } else if (r.ok) {
        // mmu_interval_read_retry said no: not installed now; the grant stands (the servicer's
        // records name the frame) and the replay faults the page again and installs it.
        space.pending.set(f.index, { frame: r.frame, perm: r.perm });
        allocated.delete(r.frame);
        retried++;
        c.mmuIntervalRetries++;
      } else if ('retry' in r) {
        retried++;
      } else {
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
    await dm.map(space, installs);
    for (const e of installs) {
      allocated.delete(e.frame);
      space.pending.delete(e.index);
    }
    if (fails.length) await dm.markFailed(space, fails, true);
  } finally {
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
    launch: launchNo,
    batch: batchNo,
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

async function readOutput(dm: DeviceMemory, plan: KernelPlan, bufs: LaunchBuffers, result: KernelResult) {
  const bytes = await dm.gpu.readBuffer(bufs.out, 0, plan.outWords * 4);
  if (plan.kind === 'devread') {
    result.bytes = bytes;
    return;
  }
  const w = new Uint32Array(bytes.buffer, bytes.byteOffset, plan.outWords);
  result.checksums = [];
  for (let p = plan.firstPage; p <= plan.lastPage; p++) {
    const o = 2 * (p - plan.firstPage);
    result.checksums.push({ index: p, sum: w[o], xor: w[o + 1] });
  }
}

/** Count the failed work items per page (only when something failed: one readback of progress). */
async function countFailedItems(
  dm: DeviceMemory,
  plan: KernelPlan,
  bufs: LaunchBuffers,
  failed: Map<string, FailedAccess>,
): Promise<void> {
  const bytes = await dm.gpu.readBuffer(bufs.progress, 0, plan.items * 4);
  const progress = new Uint32Array(bytes.buffer, bytes.byteOffset, plan.items);
  const pageWords = dm.pageSize / 4;
  for (let i = 0; i < plan.items; i++) {
    if ((progress[i] & 0x8000_0000) === 0) continue;
    const word =
      plan.kind === 'atomic'
        ? plan.firstWord + ((i * plan.spread + (progress[i] & 0x7fff_ffff)) % plan.nwords)
        : plan.firstWord + i;
    const index = Math.floor(word / pageWords);
    const f = failed.get(`${index}${plan.write ? 'w' : 'r'}`);
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
