/**
 * The device page table of one device address space (one per file mapping, keyed by the
 * AddressSpace id): a GPU storage buffer with a PTE word per page index (pte.ts), and the host's
 * shadow of what it installed. (The fault buffer is a kernel run's: replay.ts sizes it per chunk.)
 *
 * Every change to a PTE is a small kernel (shaders/pte_update.wgsl) ordered on the GPU queue after
 * the launches before it; it clears and sets bits atomically, so the DIRTY bit a kernel set survives,
 * and it returns the old PTE. A change that takes permission away (write-protect, revoke) counts as
 * done only after the queue drained (GpuDevice.drain, with a timeout): the device TLB shootdown.
 *
 * Invalidations follow mm/hmm.c's mmu_interval pattern: the table has a sequence number that every
 * invalidation bumps, recording which pages it hit; fault service takes the sequence first
 * (readBegin) and, before installing PTEs, asks which of its pages were invalidated since
 * (readRetry) and leaves those to be faulted again.
 *
 * `lock` is the device page-table lock (the driver lock of lib/test_hmm.c), innermost in the lock
 * order: invalidations (write-protect, revoke, restore) and fault service's readRetry + install run
 * under it (DeviceMemory), so an install either sees an invalidation that ran before it or is
 * invalidated by one that runs after; device eviction holds it from its revoke to its put-back.
 */
import { HmmlabError } from '../errors.ts';
import type { GpuDevice } from '../gpu/device.ts';
import { Mutex } from '../lock/mutex.ts';
import { DEVICE_PT_LOCK } from '../lock/order.ts';
import type { DevicePerm } from './pte.ts';

const MIN_PAGES = 64;
/**
 * Pages whose invalidation sequence a table remembers at most: past it, it forgets them all, and a
 * service that began before that counts every page as raced (a retry is always safe), so memory
 * does not grow with the pages a long run ever invalidated.
 */
const MAX_TRACKED_INVALIDATIONS = 1 << 16;

export interface PteOp {
  index: number;
  clear: number;
  set: number;
}

export interface InstalledPte {
  frame: number;
  perm: DevicePerm;
}

/** A PTE to install: page -> frame with a permission. */
export interface MapEntry {
  index: number;
  frame: number;
  perm: Exclude<DevicePerm, 'none'>;
}

export class DevicePageTable {
  /** Pages the PTE buffer holds; it grows (doubling) to the highest page a launch touches. */
  capacity = 0;
  pte!: GPUBuffer;
  /** The host's shadow: index -> frame and permission as installed (FAIL and DIRTY bits live on the GPU). */
  readonly entries = new Map<number, InstalledPte>();
  /** Pages whose DIRTY bit was set at the last readback (every launch reads its range back). */
  readonly dirty = new Set<number>();
  /**
   * Granted by fault service but not installed: an invalidation raced with the install
   * (mmu_interval_read_retry). The frame stays the page's; the replay's fault installs it.
   */
  readonly pending = new Map<number, InstalledPte>();
  /** The device page-table lock. */
  readonly lock = new Mutex(DEVICE_PT_LOCK);
  /** The invalidation sequence right after the last install of fault service (replay.ts). */
  installedAt = -1;
  private seq = 0;
  private readonly invalidatedAt = new Map<number, number>();
  /** readRetry for a sequence older than this cannot tell which pages were hit: it says all of them. */
  private forgottenBefore = 0;

  constructor(
    private readonly gpu: GpuDevice,
    readonly id: number,
  ) {
    this.ensureCapacity(MIN_PAGES);
  }

  /**
   * Grow the PTE buffer to hold page index `pages - 1` (doubling, within maxBufferSize); PTEs are
   * copied on the queue. ELIMIT past what one buffer can hold.
   */
  ensureCapacity(pages: number): void {
    if (pages <= this.capacity) return;
    const limit = Math.floor(this.gpu.limits.maxBufferSize / 4);
    if (pages > limit) {
      throw new HmmlabError(
        'ELIMIT',
        `device page table of space ${this.id}: page ${pages - 1} is past the ${limit} PTEs one buffer holds (maxBufferSize)`,
      );
    }
    let cap = Math.max(this.capacity, MIN_PAGES);
    while (cap < pages) cap *= 2;
    cap = Math.min(cap, limit);
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    const pte = this.gpu.createBuffer(`pte-${this.id}`, cap * 4, usage);
    if (this.capacity > 0) {
      const enc = this.gpu.device.createCommandEncoder({ label: 'pte grow' });
      enc.copyBufferToBuffer(this.pte, 0, pte, 0, this.capacity * 4);
      this.gpu.device.queue.submit([enc.finish()]);
      this.pte.destroy();
    }
    this.pte = pte;
    this.capacity = cap;
  }

  /** mmu_interval_read_begin. */
  readBegin(): number {
    return this.seq;
  }

  /** mmu_interval_read_retry, per page: the pages of `indices` invalidated since `seq`. */
  readRetry(seq: number, indices: Iterable<number>): Set<number> {
    const hit = new Set<number>();
    if (seq === this.seq) return hit;
    if (seq < this.forgottenBefore) return new Set(indices);
    for (const i of indices) if ((this.invalidatedAt.get(i) ?? -1) > seq) hit.add(i);
    return hit;
  }

  /** An invalidation (write-protect, revoke) of these pages starts. */
  invalidate(indices: Iterable<number>): void {
    this.seq++;
    for (const i of indices) this.invalidatedAt.set(i, this.seq);
    if (this.invalidatedAt.size > MAX_TRACKED_INVALIDATIONS) this.forgetInvalidations();
  }

  /**
   * No service that began before now can still ask (fault service ended): forget which pages were
   * invalidated when. A readRetry for an older sequence then says every page raced.
   */
  forgetInvalidations(): void {
    this.invalidatedAt.clear();
    this.forgottenBefore = this.seq;
  }

  /** Its buffers were destroyed (DeviceMemory.forget): it cannot be used again. */
  destroyed = false;

  destroy(): void {
    this.destroyed = true;
    this.pte.destroy();
  }
}

/** Check page indices of a request against the device's address limit. */
export function checkIndices(what: string, indices: number[]): void {
  for (const i of indices) {
    if (!Number.isInteger(i) || i < 0 || i >= 0x8000_0000) {
      throw new HmmlabError('EINVAL', `${what}: page index ${i} is not a valid page index`);
    }
  }
  if (new Set(indices).size !== indices.length) {
    throw new HmmlabError('EINVAL', `${what}: a page index is named twice`);
  }
}

/**
 * PTE ops on the queue, one dispatch of shaders/pte_update.wgsl a batch, through buffers kept for
 * the device memory's life (grown to the largest batch): its parameters and ops are queue writes
 * (buffers no GPU command writes: writeBuffer is fast there), its old PTEs a buffer the kernel
 * writes and the caller copies out in the same submit. A later update may reuse them at once: each
 * use is queued before the next one's writes (queue order), and nothing awaits in between.
 */
export class PteUpdater {
  private readonly params: GPUBuffer;
  private ops: GPUBuffer | undefined;
  private olds: GPUBuffer | undefined;
  private cap = 0;

  constructor(
    private readonly gpu: GpuDevice,
    private readonly pipeline: GPUComputePipeline,
  ) {
    this.params = gpu.createBuffer('pte-update-params', 16, GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST);
  }

  private ensure(n: number): void {
    if (n <= this.cap) return;
    let cap = Math.max(64, this.cap);
    while (cap < n) cap *= 2;
    this.ops?.destroy();
    this.olds?.destroy();
    this.ops = this.gpu.createBuffer(
      'pte-update-ops',
      cap * 12,
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
    );
    this.olds = this.gpu.createBuffer(
      'pte-update-olds',
      cap * 4,
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    );
    this.cap = cap;
  }

  /**
   * Queue `ops` on `table` into `enc` (their words are written to the queue now: submit `enc`
   * before anything else is queued); with `olds`, the old PTE words are copied there after the
   * dispatch, in the order of `ops`.
   */
  encode(
    enc: GPUCommandEncoder,
    table: DevicePageTable,
    ops: readonly PteOp[],
    olds?: { dst: GPUBuffer; offset: number },
  ): void {
    if (ops.length === 0) return;
    let maxIndex = 0;
    for (const o of ops) maxIndex = Math.max(maxIndex, o.index);
    table.ensureCapacity(maxIndex + 1);
    this.ensure(ops.length);
    const words = new Uint32Array(ops.length * 3);
    ops.forEach((o, i) => {
      words[3 * i] = o.index;
      words[3 * i + 1] = o.clear >>> 0;
      words[3 * i + 2] = o.set >>> 0;
    });
    const q = this.gpu.device.queue;
    q.writeBuffer(this.params, 0, Uint32Array.from([ops.length, table.capacity, 0, 0]));
    q.writeBuffer(this.ops!, 0, words);
    const bind = this.gpu.device.createBindGroup({
      layout: this.pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: this.params } },
        { binding: 1, resource: { buffer: table.pte } },
        { binding: 2, resource: { buffer: this.ops!, size: ops.length * 12 } },
        { binding: 3, resource: { buffer: this.olds!, size: ops.length * 4 } },
      ],
    });
    const pass = enc.beginComputePass({ label: 'pte update' });
    pass.setPipeline(this.pipeline);
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(Math.ceil(ops.length / 64));
    pass.end();
    if (olds) enc.copyBufferToBuffer(this.olds!, 0, olds.dst, olds.offset, ops.length * 4);
  }

  /** Queue `ops` and submit them on their own (no old PTEs, no wait). */
  submit(table: DevicePageTable, ops: readonly PteOp[]): void {
    if (ops.length === 0) return;
    const enc = this.gpu.device.createCommandEncoder({ label: 'pte update' });
    this.encode(enc, table, ops);
    this.gpu.device.queue.submit([enc.finish()]);
  }

  destroy(): void {
    this.params.destroy();
    this.ops?.destroy();
    this.olds?.destroy();
  }
}

/**
 * PTE ops applied on their own, bypassing the device memory and its host shadow (the invariant
 * checker's tests corrupt a PTE with it): one dispatch, then a drain. Returns the old PTE words
 * with `wantOld`.
 */
export async function applyPteOps(
  gpu: GpuDevice,
  pipeline: GPUComputePipeline,
  table: DevicePageTable,
  ops: PteOp[],
  opts: { wantOld?: boolean } = {},
): Promise<Uint32Array | null> {
  const updater = new PteUpdater(gpu, pipeline);
  try {
    if (!opts.wantOld) {
      updater.submit(table, ops);
      await gpu.drain('device page table update');
      return null;
    }
    const read = gpu.createBuffer(
      'pte-olds-readback',
      Math.max(4, ops.length * 4),
      GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    );
    try {
      const enc = gpu.device.createCommandEncoder({ label: 'pte update' });
      updater.encode(enc, table, ops, { dst: read, offset: 0 });
      gpu.device.queue.submit([enc.finish()]);
      await gpu.map(read, GPUMapMode.READ);
      return new Uint32Array(read.getMappedRange().slice(0, ops.length * 4));
    } finally {
      read.destroy();
    }
  } finally {
    updater.destroy();
  }
}
