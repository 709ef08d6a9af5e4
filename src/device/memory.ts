/**
 * DeviceMemory: one GPU's memory as the coherence policy sees it. It owns the frame pool, the
 * device address spaces (page tables) and the kernels, and offers the primitives a policy builds
 * Kara's mirror scheme from: PTE changes with shootdown, batched copies, frame allocation with LRU
 * eviction through the owner's hook, and kernel launches with fault service and replay (replay.ts).
 *
 * Order of work: everything a caller asks for is ordered on the one GPU queue (copies, PTE
 * updates, launches), so a copy queued before a PTE install is visible to the launch after it.
 * Copies to frames are staged (copy.ts) and submitted before anything reads frames (a launch, a
 * copy back) and at the end of each fault batch. A permission is only taken away once the GPU has
 * done everything queued before the change (shootdown): the map of a readback submitted after it
 * says so, and `pull` puts the change and the copy back in one submit and one map.
 *
 * Locking: every change of a device page table (map, protect, revoke, pull, restore) runs under
 * that table's lock (DevicePageTable.lock, innermost in the lock order), and so do fault service's
 * mmu_interval_read_retry and install (replay.ts) and a device eviction from its revoke to its
 * put-back: an eviction and a CPU path's write-protect or revoke of the same page never interleave.
 */
import { type Errno, errorMessage, HmmlabError, isHmmlabError } from '../errors.ts';
import type { GpuDevice } from '../gpu/device.ts';
import { type FaultInjector, injectedError, injectedPoint, NO_INJECT } from '../inject/inject.ts';
import {
  chooseUploadPath,
  type FrameCopier,
  type FrameWrite,
  frameCopier,
  type ReadHead,
  type UploadPath,
} from './copy.ts';
import { formatPages } from './fault.ts';
import { FramePool } from './frames.ts';
import {
  chunkBytesFor,
  DEFAULT_CHUNK_BYTES,
  type KernelKind,
  type KernelParams,
  KernelPipelines,
  SOFTWARE_CHUNK_BYTES,
} from './kernels.ts';
import {
  checkIndices,
  DevicePageTable,
  type InstalledPte,
  type MapEntry,
  type PteOp,
  PteUpdater,
} from './pagetable.ts';
import {
  type DevicePerm,
  PTE_ALL,
  PTE_DIRTY,
  PTE_FAIL_READ,
  PTE_FAIL_WRITE,
  PTE_WRITE,
  pteDecode,
  pteDirty,
  pteEncode,
} from './pte.ts';
import {
  type DeviceOutputSink,
  type FaultEngineHost,
  type FaultServicer,
  type KernelResult,
  LaunchBufferPool,
  type PrefetchResult,
  prefetchPages,
  runKernel,
} from './replay.ts';
import { DEFAULT_REPLAY_POLICY, type ReplayPolicy } from './replayPolicy.ts';
import { type DeviceCounters, type FaultBatchRecord, zeroCounters } from './stats.ts';

export interface DeviceMemoryOptions {
  /** Frames in the pool. */
  devicePages: number;
  /** Bytes a page: a power of two from 4 KiB to 2 MiB; the page cache's page size. */
  pageSize: number;
  /** Unique faults handed to the servicer at once (NVIDIA UVM's default: 256). */
  batchSize?: number;
  /** Frames per frame buffer (default: as many as one binding holds). */
  framesPerBuffer?: number;
  /** Launches of one chunk of a kernel run before it gives up (ELOOP-like EGPU error). */
  maxLaunches?: number;
  /**
   * Work one launch covers at most (kernels.ts DEFAULT_CHUNK_BYTES, 16 MiB; 4 MiB on a software
   * adapter; clamped to the adapter's binding limit): a longer op runs chunk by chunk. Tests lower
   * it to span many chunks.
   */
  chunkBytes?: number;
  /** When faults are replayed (NVIDIA UVM's four policies; replay.ts): default `once`. */
  replayPolicy?: ReplayPolicy;
  /**
   * How host pages reach frames: the staging ring or writeBuffer; `auto` (the default) takes the
   * one this adapter measured faster (copy.ts chooseUploadPath). Tests name each to cover both.
   */
  uploadPath?: UploadPath | 'auto';
  /** Record device faults per subgroup where the adapter has subgroups (default true). */
  subgroups?: boolean;
}

/** What `pull` takes back from the device, and what it copies home (memory.ts `pull`). */
export interface PullRequest {
  /** Write-protect (rw -> ro), the DIRTY bit cleared in the same step: the data comes back now. */
  protect?: number[];
  /** Revoke: the device loses the page; its frame stays allocated (off the LRU) for the caller. */
  revoke?: number[];
  /**
   * Pages to copy back into `into` (a page-sized view: the host page itself): `always`, or only
   * where the device wrote the page (the DIRTY bit its old PTE had).
   */
  copies?: { index: number; frame: number; into: Uint8Array; always: boolean }[];
}

export interface PullResult {
  /** Each page whose PTE was write-protected or revoked: frame, old permission and DIRTY bit. */
  changes: PteChange[];
  /** The pages copied into their `into`. */
  copied: Set<number>;
  /**
   * The grants not installed yet (space.pending) of the pages asked, as they were before the pull
   * made them read-only or took them back: what restore() puts back if the caller's work fails.
   */
  pending: Map<number, InstalledPte>;
}

/** A frame leaving the device: its PTE is already revoked (and the TLB shot down). */
export interface EvictedFrame {
  space: number;
  index: number;
  frame: number;
  /** The device wrote it since it was last cleaned: its data must be copied back. */
  dirty: boolean;
}

/**
 * What the owner did with the victims: those it could not take now (`kept`: their page is locked,
 * or the copy back or the write to disk failed) go back on the device as they were, PTE and DIRTY
 * bit included; `error` is thrown after that (an eviction that failed loses nothing).
 */
export interface EvictionOutcome {
  kept: EvictedFrame[];
  error?: unknown;
}

/**
 * The owner's (policy's) eviction hook: copy each dirty frame back (to its host page, or to disk
 * where the host page is gone) before the frames are reused; clean frames are just dropped. It must
 * not throw: a victim it cannot take is `kept`, with the error.
 */
export type EvictionHook = (
  victims: EvictedFrame[],
  memory: DeviceMemory,
) => Promise<EvictionOutcome | undefined>;

export interface PteChange {
  index: number;
  frame: number;
  /** The device wrote it since it was last cleaned (the DIRTY bit before the change). */
  dirty: boolean;
  /** The permission before the change (what restore() puts back). */
  perm: 'ro' | 'rw';
  /**
   * A grant for the page not installed yet (its install lost a race: a permission upgrade whose
   * replay is to come), which the change took back too; restore() puts it back with the PTE.
   */
  pending?: InstalledPte;
}

/** A device page's state, as test_hmm's SNAPSHOT reports it. */
export interface DevicePageState {
  index: number;
  frame: number | null;
  perm: DevicePerm;
  dirty: boolean;
  failRead: boolean;
  failWrite: boolean;
}

export const DEFAULT_BATCH_SIZE = 256;
const MAX_BATCH_RECORDS = 10_000;

export class DeviceMemory implements FaultEngineHost {
  readonly pool: FramePool;
  readonly batchSize: number;
  readonly maxLaunches: number;
  readonly replayPolicy: ReplayPolicy;
  /** How host pages reach frames here (chooseUploadPath's choice, or the option's). */
  readonly uploadPath: UploadPath;
  readonly launchBuffers: LaunchBufferPool;
  private readonly copier: FrameCopier;
  private readonly updater: PteUpdater;
  /** Work a launch covers at most (bytes of words, or of atomic threads' progress). */
  readonly chunkBytes: number;
  readonly counters: DeviceCounters = zeroCounters();
  /** The last MAX_BATCH_RECORDS fault batches. */
  readonly batchLog: FaultBatchRecord[] = [];
  private readonly spaces = new Map<number, DevicePageTable>();
  private readonly running = new Map<number, Promise<void>>();
  /** Kernel runs queued or in flight, per space. */
  private readonly kernelsOn = new Map<number, number>();
  /** The owners' eviction hooks, by device address space; `defaultHook` for spaces without one. */
  private readonly evictionHooks = new Map<number, EvictionHook>();
  private defaultHook: EvictionHook | null = null;
  /** Fault injection (frame-alloc, copy-to-device, copy-from-device, kernel-launch, device-lost, ...). */
  inject: FaultInjector = NO_INJECT;
  private lostReason: string | undefined;
  private readonly unsubscribeLost: () => void;

  private constructor(
    readonly gpu: GpuDevice,
    readonly kernels: KernelPipelines,
    opts: DeviceMemoryOptions,
    uploadPath: UploadPath,
  ) {
    this.pool = new FramePool(gpu, opts);
    this.uploadPath = uploadPath;
    this.replayPolicy = opts.replayPolicy ?? DEFAULT_REPLAY_POLICY;
    this.copier = frameCopier(gpu);
    this.updater = new PteUpdater(gpu, kernels.pteUpdate);
    this.launchBuffers = new LaunchBufferPool(gpu);
    const batch = opts.batchSize ?? DEFAULT_BATCH_SIZE;
    if (!Number.isInteger(batch) || batch < 1) {
      throw new HmmlabError('EINVAL', `fault batch size ${batch} is not a positive integer`);
    }
    this.batchSize = batch;
    this.maxLaunches = opts.maxLaunches ?? 10_000;
    const chunkDefault = gpu.info.software ? SOFTWARE_CHUNK_BYTES : DEFAULT_CHUNK_BYTES;
    this.chunkBytes = chunkBytesFor(opts.chunkBytes ?? chunkDefault, gpu.limits);
    this.unsubscribeLost = gpu.onLost((reason) => {
      this.lostReason = reason;
    });
  }

  static async create(gpu: GpuDevice, opts: DeviceMemoryOptions): Promise<DeviceMemory> {
    const kernels = await KernelPipelines.create(gpu, { subgroups: opts.subgroups });
    const path = opts.uploadPath ?? 'auto';
    const upload = path === 'auto' ? (await chooseUploadPath(gpu)).path : path;
    return new DeviceMemory(gpu, kernels, opts, upload);
  }

  get pageSize(): number {
    return this.pool.pageSize;
  }

  /** The device address space of AddressSpace `id` (created on first use). */
  space(id: number): DevicePageTable {
    let t = this.spaces.get(id);
    if (!t) {
      if (!Number.isInteger(id) || id < 0)
        throw new HmmlabError('EINVAL', `address space id ${id} is not valid`);
      t = new DevicePageTable(this.gpu, id);
      this.spaces.set(id, t);
    }
    return t;
  }

  /** Device address spaces alive now (each holds a page table and a fault buffer on the GPU). */
  get spaceCount(): number {
    return this.spaces.size;
  }

  /**
   * Forget the device address space of AddressSpace `id` once its file left the cache (unmount,
   * or every page invalidated): destroy its page table and fault buffer, so that spaces do not pile
   * up a pair of GPU buffers per file per mount. A later space(id) starts a fresh, empty one.
   * Returns false when there was none. EINVAL while the space still maps a page or owns a frame
   * (the caller must revoke and free them first); EBUSY-like EINVAL while a kernel runs on it.
   */
  forget(id: number): boolean {
    const t = this.spaces.get(id);
    if (!t) return false;
    if (this.kernelsOn.has(id)) {
      throw new HmmlabError('EINVAL', `forget device address space ${id}: a kernel is running on it`);
    }
    const owned = this.pool.ownedFrames().filter((f) => this.pool.owner(f)!.space === id);
    if (t.entries.size > 0 || t.pending.size > 0 || owned.length > 0) {
      const pages = [
        ...t.entries.keys(),
        ...t.pending.keys(),
        ...owned.map((f) => this.pool.owner(f)!.index),
      ];
      throw new HmmlabError(
        'EINVAL',
        `forget device address space ${id}: pages ${formatPages(pages)} still hold device frames`,
      );
    }
    this.spaces.delete(id);
    this.evictionHooks.delete(id);
    if (!this.gpu.lost) t.destroy();
    return true;
  }

  /**
   * The eviction hook of the owner of device address space `space` (a policy registers one for each
   * space it creates, so that two mounts on one device each take back their own frames), or, with
   * no space, the hook for spaces that have none.
   */
  setEvictionHook(fn: EvictionHook | null, space?: number): void {
    if (space === undefined) this.defaultHook = fn;
    else if (fn) this.evictionHooks.set(space, fn);
    else this.evictionHooks.delete(space);
  }

  // ---- frames ----

  /**
   * Frames for pages `indices` of `space`, evicting least recently used frames as needed (through
   * the eviction hook). A frame is not evictable until it is mapped. null where no frame could be
   * had (every frame is pinned by the fault batch in service).
   */
  allocFrames(space: DevicePageTable, indices: number[]): Promise<(number | null)[]> {
    return this.guard('allocate device frames', async () => {
      this.own(space, 'allocate device frames');
      if (this.inject.should_fail('frame-alloc')) {
        throw injectedError(
          'frame-alloc',
          new HmmlabError('ENOMEM', `allocate ${indices.length} device frames: out of GPU memory`),
        );
      }
      const owners = indices.map((index) => ({ space: space.id, index }));
      const got = this.pool.takeFree(owners);
      if (got.length < owners.length) {
        const victims = this.pool.victims(owners.length - got.length);
        try {
          if (victims.length) await this.evictFrames(victims);
        } catch (e) {
          for (const f of got) this.pool.release(f); // an allocation that fails takes nothing
          throw e;
        }
        got.push(...this.pool.takeFree(owners.slice(got.length)));
      }
      return indices.map((_, i) => got[i] ?? null);
    });
  }

  /** Return frames to the pool (their PTEs must be revoked already). */
  freeFrames(frames: number[]): void {
    for (const f of frames) {
      const owner = this.pool.owner(f);
      const t = owner ? this.spaces.get(owner.space) : undefined;
      const entry = t?.entries.get(owner!.index) ?? t?.pending.get(owner!.index);
      if (entry && entry.frame === f) {
        throw new HmmlabError(
          'EINVAL',
          `free frame ${f}: page ${owner!.index} of space ${owner!.space} still maps it`,
        );
      }
      this.pool.release(f);
    }
  }

  /**
   * Device eviction: revoke the frames' PTEs (shootdown), let each owner copy dirty ones back, free
   * them. A victim its owner kept (or every victim of an owner that failed) is put back as it was:
   * frame owned, PTE and DIRTY bit restored, on the LRU. Returns the frames freed; throws the owner's
   * error after the put-back.
   */
  async evictFrames(frames: number[]): Promise<EvictedFrame[]> {
    const bySpace = new Map<number, number[]>();
    for (const f of frames) {
      const o = this.pool.owner(f);
      if (!o) continue;
      if (!this.evictionHooks.has(o.space) && !this.defaultHook) {
        throw new HmmlabError(
          'ENOSPC',
          `device memory is full (${this.pool.devicePages} frames) and no eviction hook is set to make room`,
        );
      }
      const list = bySpace.get(o.space);
      if (list) list.push(o.index);
      else bySpace.set(o.space, [o.index]);
    }
    const evicted: EvictedFrame[] = [];
    let error: unknown;
    for (const [id, indices] of bySpace) {
      const space = this.space(id);
      // The page-table lock from the revoke to the put-back: no write-protect or revoke of a
      // victim by a CPU path runs between them (it would find the page gone, then put back).
      const outcome = await space.lock.run(async () => {
        const changes = await this.guard('revoke device pages', () => this.revokeLocked(space, indices));
        const victims = changes.map((c) => ({ space: id, index: c.index, frame: c.frame, dirty: c.dirty }));
        const hook = (this.evictionHooks.get(id) ?? this.defaultHook)!;
        let out: EvictionOutcome | undefined;
        try {
          out = await hook(victims, this);
        } catch (e) {
          out = { kept: victims, error: e };
        }
        const kept = new Set((out?.kept ?? []).map((v) => v.frame));
        if (kept.size)
          await this.guard('restore device pages', () =>
            this.restoreLocked(
              space,
              changes.filter((c) => kept.has(c.frame)),
            ),
          );
        return { victims, kept, error: out?.error };
      });
      for (const v of outcome.victims) {
        if (outcome.kept.has(v.frame)) continue;
        this.pool.release(v.frame);
        evicted.push(v);
      }
      if (outcome.error !== undefined && error === undefined) error = outcome.error;
      if (error !== undefined) break;
    }
    this.counters.evictions += evicted.length;
    this.counters.evictionsDirty += evicted.filter((v) => v.dirty).length;
    if (error !== undefined) throw error;
    return evicted;
  }

  // ---- the device page table ----

  /**
   * Install PTEs: page -> frame with perm. The frame must belong to that page (allocFrames). A
   * change that takes a permission away or moves a page to another frame waits for a shootdown.
   */
  map(space: DevicePageTable, entries: MapEntry[]): Promise<void> {
    return this.guard('map device pages', () => space.lock.run(() => this.mapLocked(space, entries)));
  }

  /** @internal map() with the page-table lock held (fault service's install, replay.ts). */
  async mapLocked(space: DevicePageTable, entries: MapEntry[]): Promise<void> {
    this.own(space, 'map device pages');
    checkIndices(
      'map device pages',
      entries.map((e) => e.index),
    );
    let shootdown = false;
    const ops: PteOp[] = entries.map((e) => {
      const owner = this.pool.owner(e.frame);
      if (!owner || owner.space !== space.id || owner.index !== e.index) {
        throw new HmmlabError('EINVAL', `map page ${e.index}: frame ${e.frame} was not allocated for it`);
      }
      const old = space.entries.get(e.index);
      if (old && (old.frame !== e.frame || (old.perm === 'rw' && e.perm === 'ro'))) shootdown = true;
      // Same frame: keep the DIRTY bit a kernel set; a new frame starts clean.
      const clear = old && old.frame === e.frame ? (PTE_ALL & ~PTE_DIRTY) >>> 0 : PTE_ALL;
      return { index: e.index, clear, set: pteEncode(e.frame, e.perm) };
    });
    if (shootdown) space.invalidate(entries.map((e) => e.index));
    await this.pteOps(space, ops, shootdown, false);
    for (const e of entries) {
      const old = space.entries.get(e.index);
      // A page moved to another frame: its old frame is no one's now.
      if (old && old.frame !== e.frame) this.pool.release(old.frame);
      space.entries.set(e.index, { frame: e.frame, perm: e.perm });
      space.pending.delete(e.index);
      this.pool.list(e.frame);
    }
  }

  /**
   * Write-protect pages (rw -> ro) and wait for the shootdown. Returns each protected page's frame
   * and whether the device wrote it; with `cleanDirty`, the DIRTY bit is cleared in the same atomic
   * step (the caller copies those frames back: nothing can dirty them again while read-only).
   */
  protect(
    space: DevicePageTable,
    indices: number[],
    opts: { cleanDirty?: boolean } = {},
  ): Promise<PteChange[]> {
    return this.guard('write-protect device pages', () =>
      space.lock.run(async () => {
        this.own(space, 'write-protect device pages');
        checkIndices('write-protect device pages', indices);
        const hit = indices.filter((i) => space.entries.get(i)?.perm === 'rw');
        const clear = opts.cleanDirty ? (PTE_WRITE | PTE_DIRTY) >>> 0 : PTE_WRITE;
        // mm/hmm.c invalidates the whole range: a page in fault service, not installed yet, is hit too.
        space.invalidate(indices);
        const olds = await this.pteOps(
          space,
          hit.map((index) => ({ index, clear, set: 0 })),
          true,
          true,
        );
        this.counters.writeProtects += hit.length;
        const changes = this.takeProtected(space, indices, hit, olds!);
        // Without cleanDirty the DIRTY bit stays on the (now read-only) PTE: the host's shadow keeps it.
        if (!opts.cleanDirty) for (const ch of changes) if (ch.dirty) space.dirty.add(ch.index);
        return changes;
      }),
    );
  }

  /**
   * Remove the device's access to pages and wait for the shootdown. The frames stay allocated (off
   * the LRU) so the caller can copy dirty ones back; then it frees them (freeFrames), or keeps them.
   */
  revoke(space: DevicePageTable, indices: number[]): Promise<PteChange[]> {
    return this.guard('revoke device pages', () => space.lock.run(() => this.revokeLocked(space, indices)));
  }

  private async revokeLocked(space: DevicePageTable, indices: number[]): Promise<PteChange[]> {
    this.own(space, 'revoke device pages');
    checkIndices('revoke device pages', indices);
    const hit = indices.filter((i) => space.entries.has(i));
    space.invalidate(indices);
    const olds = await this.pteOps(
      space,
      hit.map((index) => ({ index, clear: PTE_ALL, set: 0 })),
      true,
      true,
    );
    this.counters.revocations += hit.length;
    return this.takeRevoked(space, indices, hit, olds!);
  }

  /** The host's shadow after a revoke of `hit` (of the `asked` pages) whose old PTEs are `olds`. */
  private takeRevoked(
    space: DevicePageTable,
    asked: number[],
    hit: number[],
    olds: Uint32Array,
  ): PteChange[] {
    const pendingBefore = pendingOf(space, asked);
    for (const i of asked) space.pending.delete(i); // a grant not installed yet is taken back too
    return hit.map((index, i) => {
      const e = space.entries.get(index)!;
      space.entries.delete(index);
      space.dirty.delete(index);
      this.pool.unlist(e.frame);
      return change(index, e.frame, olds[i], e.perm as 'ro' | 'rw', pendingBefore.get(index));
    });
  }

  /** The host's shadow after a write-protect of `hit` (DIRTY cleaned) whose old PTEs are `olds`. */
  private takeProtected(
    space: DevicePageTable,
    asked: number[],
    hit: number[],
    olds: Uint32Array,
  ): PteChange[] {
    const pendingBefore = pendingOf(space, asked);
    for (const i of asked) {
      const p = space.pending.get(i);
      if (p) p.perm = 'ro'; // granted, not installed: it will be installed read-only
    }
    return hit.map((index, i) => {
      const e = space.entries.get(index)!;
      e.perm = 'ro';
      space.dirty.delete(index);
      return change(index, e.frame, olds[i], 'rw', pendingBefore.get(index));
    });
  }

  /**
   * Take permissions back and copy device data home in one go: write-protect (`protect`, DIRTY
   * cleaned) and revoke (`revoke`) in one PTE update, and the copies in the same submit, after it
   * (queue order: no launch before it can still write them) and in the same map, which also says
   * the update is done (the shootdown). A copy asked only if the device wrote the page is made
   * ahead where the host's shadow of the DIRTY bits says so (exact between kernel runs: every launch
   * reads its PTEs back), and for the rare page the shadow missed, in a second read. Copies land
   * straight in their `into`. If a copy fails, the PTEs are put back as they were (permission and
   * DIRTY bit) before the error is thrown: nothing was taken.
   */
  pull(space: DevicePageTable, req: PullRequest): Promise<PullResult> {
    return this.guard('copy device pages back', () => space.lock.run(() => this.pullLocked(space, req)));
  }

  private async pullLocked(space: DevicePageTable, req: PullRequest): Promise<PullResult> {
    this.own(space, 'copy device pages back');
    const protect = req.protect ?? [];
    const revoke = req.revoke ?? [];
    const copies = req.copies ?? [];
    checkIndices('copy device pages back', [...protect, ...revoke]);
    const pHit = protect.filter((i) => space.entries.get(i)?.perm === 'rw' && !revoke.includes(i));
    const rHit = revoke.filter((i) => space.entries.has(i));
    const ops: PteOp[] = [
      ...pHit.map((index) => ({ index, clear: (PTE_WRITE | PTE_DIRTY) >>> 0, set: 0 })),
      ...rHit.map((index) => ({ index, clear: PTE_ALL, set: 0 })),
    ];
    // Every page asked is invalidated, installed or not: a grant still pending is made read-only
    // or taken back (its service, whose install follows, sees the race), as protect and revoke do.
    const pending = pendingOf(space, [...protect, ...revoke]);
    if (protect.length) space.invalidate(protect);
    if (revoke.length) space.invalidate(revoke);
    if (ops.length === 0 && copies.length === 0) {
      const none = new Uint32Array(0);
      this.takeProtected(space, protect, [], none);
      this.takeRevoked(space, revoke, [], none);
      return { changes: [], copied: new Set(), pending };
    }
    const ahead = copies.filter((c) => c.always || space.dirty.has(c.index));
    let olds: Uint32Array | undefined;
    const t0 = performance.now();
    // Too many PTEs to ride with the pages in one ring buffer: change them first, on their own.
    const apart = ops.length * 4 + this.pageSize > this.copier.ringBytes;
    if (apart) olds = (await this.pteOps(space, ops, true, true))!;
    const fail = ahead.length > 0 && this.inject.should_fail('copy-from-device');
    const head =
      ops.length && !apart
        ? this.pteHead(space, ops, (o) => {
            olds = o;
          })
        : undefined;
    let changes: PteChange[] = [];
    const taken = () => {
      const o = olds ?? new Uint32Array(ops.length);
      changes = [
        ...this.takeProtected(space, protect, pHit, o.subarray(0, pHit.length)),
        ...this.takeRevoked(space, revoke, rHit, o.subarray(pHit.length)),
      ];
    };
    try {
      await this.gpu.scoped('copy device pages back', () =>
        this.copier.read(
          this.pool,
          ahead.map((c) => c.frame),
          {
            into: ahead.map((c) => c.into),
            head,
            failAfterHead: fail ? () => this.copyTimedOut() : undefined,
          },
        ),
      );
      if (ops.length && !apart) {
        this.counters.pteUpdates += ops.length;
        this.counters.shootdowns++;
      }
      this.counters.writeProtects += pHit.length;
      this.counters.revocations += rHit.length;
      taken();
      const wrote = new Set(changes.filter((ch) => ch.dirty).map((ch) => ch.index));
      // Copied and needed (a copy made ahead of a page the device did not write is not counted:
      // it holds what the host page held).
      const copied = new Set(ahead.filter((c) => c.always || wrote.has(c.index)).map((c) => c.index));
      const early = new Set(ahead.map((c) => c.index));
      const late = copies.filter((c) => !early.has(c.index) && wrote.has(c.index));
      if (late.length) {
        // The shadow missed a DIRTY bit (a kernel ran since): copy those too.
        await this.copier.read(
          this.pool,
          late.map((c) => c.frame),
          { into: late.map((c) => c.into) },
        );
        for (const c of late) copied.add(c.index);
      }
      this.counters.bytesDeviceToHost += copied.size * this.pageSize;
      this.counters.copiesFromDevice += copied.size;
      this.counters.copyMs += performance.now() - t0;
      return { changes, copied, pending };
    } catch (e) {
      if (ops.length && !this.gpu.lost) {
        // The copy did not land: put the PTEs back. Unknown old PTEs (the first map failed) come
        // back DIRTY where writable (the device may have written them: a copy back later is safe).
        if (changes.length === 0) {
          if (!olds) {
            olds = new Uint32Array(ops.length);
            ops.forEach((o, i) => {
              if (space.entries.get(o.index)?.perm === 'rw') olds![i] = PTE_DIRTY;
            });
          }
          taken();
        }
        await this.restoreLocked(space, changes, pending).catch(() => {});
      }
      throw e;
    }
  }

  /** A readback head that updates `ops`' PTEs and lands their old values (in `land`) in the same map. */
  private pteHead(space: DevicePageTable, ops: PteOp[], land: (olds: Uint32Array) => void): ReadHead {
    return {
      bytes: ops.length * 4,
      encode: (enc, dst) => this.updater.encode(enc, space, ops, { dst, offset: 0 }),
      land: (mapped) => land(new Uint32Array(mapped.slice(0, ops.length * 4).buffer)),
    };
  }

  private copyTimedOut(): never {
    throw injectedError(
      'copy-from-device',
      new HmmlabError(
        'ETIMEDOUT',
        `mapAsync frames-readback: no answer from the GPU in ${this.gpu.timeoutMs} ms`,
      ),
    );
  }

  /**
   * Put back what a protect() or revoke() took away, when the work it was for failed (a copy back
   * that did not land): the PTE with its permission and its DIRTY bit, the frame on the LRU. It
   * only gives permission back, so it needs no shootdown.
   */
  restore(space: DevicePageTable, changes: PteChange[], pending?: Map<number, InstalledPte>): Promise<void> {
    return this.guard('restore device pages', () =>
      space.lock.run(() => this.restoreLocked(space, changes, pending)),
    );
  }

  /**
   * `pending`: grants not installed yet that the change made read-only or took back (pendingOf
   * before it, PullResult.pending); those of pages without a PTE change come back as they were.
   */
  private async restoreLocked(
    space: DevicePageTable,
    changes: PteChange[],
    pending?: Map<number, InstalledPte>,
  ): Promise<void> {
    this.own(space, 'restore device pages');
    if (pending) {
      const changed = new Set(changes.map((c) => c.index));
      for (const [i, p] of pending) if (!changed.has(i)) space.pending.set(i, { ...p });
    }
    if (changes.length === 0) return;
    for (const c of changes) {
      const owner = this.pool.owner(c.frame);
      if (!owner || owner.space !== space.id || owner.index !== c.index) {
        throw new HmmlabError('EINVAL', `restore page ${c.index}: frame ${c.frame} is no longer its own`);
      }
    }
    await this.pteOps(
      space,
      changes.map((c) => ({
        index: c.index,
        clear: PTE_ALL,
        set: (pteEncode(c.frame, c.perm) | (c.dirty ? PTE_DIRTY : 0)) >>> 0,
      })),
      false,
      false,
    );
    for (const c of changes) {
      space.entries.set(c.index, { frame: c.frame, perm: c.perm });
      if (c.dirty) space.dirty.add(c.index);
      if (c.pending) space.pending.set(c.index, { ...c.pending });
      this.pool.list(c.frame);
    }
  }

  /** Pages in [first, last] whose DIRTY bit is set now. */
  readDirty(space: DevicePageTable, first: number, last: number): Promise<number[]> {
    return this.guard('read device dirty bits', async () => {
      this.own(space, 'read device dirty bits');
      const words = await this.readPtes(space, first, last);
      const out: number[] = [];
      words.forEach((w, i) => {
        if (pteDirty(w)) out.push(first + i);
      });
      return out;
    });
  }

  /** Clear DIRTY bits (after the data was copied back). */
  clearDirty(space: DevicePageTable, indices: number[]): Promise<void> {
    return this.guard('clear device dirty bits', async () => {
      this.own(space, 'clear device dirty bits');
      checkIndices('clear device dirty bits', indices);
      await this.pteOps(
        space,
        indices.map((index) => ({ index, clear: PTE_DIRTY, set: 0 })),
        false,
        false,
      );
      for (const i of indices) space.dirty.delete(i);
    });
  }

  /** Set or clear the FAIL bits of pages for the launches to come (replay.ts). */
  async markFailed(
    space: DevicePageTable,
    pages: { index: number; write: boolean }[],
    on: boolean,
  ): Promise<void> {
    const bits = new Map<number, number>();
    for (const p of pages)
      bits.set(p.index, (bits.get(p.index) ?? 0) | (p.write ? PTE_FAIL_WRITE : PTE_FAIL_READ));
    const ops = [...bits].map(([index, b]) =>
      on ? { index, clear: 0, set: b } : { index, clear: b, set: 0 },
    );
    await this.pteOps(space, ops, false, false);
  }

  /** Each page's device state in [first, last], read from the GPU's page table. */
  snapshot(space: DevicePageTable, first: number, last: number): Promise<DevicePageState[]> {
    return this.guard('device snapshot', async () => {
      this.own(space, 'device snapshot');
      const words = await this.readPtes(space, first, last);
      return [...words].map((w, i) => ({ index: first + i, ...pteDecode(w) }));
    });
  }

  // ---- copies ----

  /** Host pages -> frames (copy.ts), submitted at once: ordered on the queue before later launches. */
  async copyToFrames(items: FrameWrite[]): Promise<void> {
    await this.stageToFrames(items);
    this.flushCopies();
  }

  /**
   * Host pages -> frames, staged in the upload ring (or written, on a writeBuffer adapter): the
   * copies are submitted a ring buffer at a time and by flushCopies, and before anything reads
   * frames. The copy-to-device injection point fails it before anything is copied.
   */
  async stageToFrames(items: FrameWrite[]): Promise<void> {
    this.checkLost('copy to device frames');
    if (items.length && this.inject.should_fail('copy-to-device')) {
      throw injectedError(
        'copy-to-device',
        new HmmlabError(
          'EGPU',
          `copy of ${items.length} pages to device frames: GPU error (queue write failed)`,
        ),
      );
    }
    const t0 = performance.now();
    const bytes = await this.copier.stage(this.pool, items, this.uploadPath);
    this.counters.bytesHostToDevice += bytes;
    this.counters.copiesToDevice += items.length;
    this.counters.copyMs += performance.now() - t0;
  }

  /** Submit the staged copies (the fault engine does at the end of each batch). */
  flushCopies(): void {
    if (!this.gpu.lost) this.copier.flush();
  }

  /** Wait until everything queued (staged copies included) has landed on the device. */
  async drain(what: string): Promise<void> {
    this.flushCopies();
    await this.gpu.drain(what);
  }

  /**
   * Frames -> host: each frame's page, in the order asked, copied straight into `into[i]` where
   * given (a page-sized view) or into a new array. The copy-from-device injection point makes the
   * readback's map time out (ETIMEDOUT) before any page is copied out.
   */
  copyFromFrames(frames: number[], into?: readonly (Uint8Array | undefined)[]): Promise<Uint8Array[]> {
    return this.guard('copy from device frames', async () => {
      const t0 = performance.now();
      const fail = frames.length > 0 && this.inject.should_fail('copy-from-device');
      const pages = await this.copier.read(this.pool, frames, {
        into,
        failAfterHead: fail ? () => this.copyTimedOut() : undefined,
      });
      this.counters.bytesDeviceToHost += frames.length * this.pageSize;
      this.counters.copiesFromDevice += frames.length;
      this.counters.copyMs += performance.now() - t0;
      return pages;
    });
  }

  // ---- kernels ----

  /**
   * Launch a device kernel over `space`, servicing faults through `servicer` and replaying until
   * done, chunk by chunk. A devread hands its bytes to `sink` as each chunk ends, if one is given.
   */
  runKernel(
    kind: KernelKind,
    space: DevicePageTable,
    params: KernelParams,
    servicer: FaultServicer,
    sink?: DeviceOutputSink,
  ): Promise<KernelResult> {
    try {
      this.own(space, `device kernel ${kind}`);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.inTurn(space, `device kernel ${kind}`, () =>
      runKernel(this, kind, space, params, servicer, sink),
    );
  }

  /**
   * Prefetch (cudaMemPrefetchAsync): pages `requests` of `space` serviced through `servicer` as
   * their faults would be, a batch at a time, and mapped; no kernel runs. In turn with the
   * kernel runs on the space.
   */
  prefetch(
    space: DevicePageTable,
    requests: { index: number; write: boolean }[],
    servicer: FaultServicer,
  ): Promise<PrefetchResult> {
    try {
      this.own(space, 'device prefetch');
      checkIndices(
        'device prefetch',
        requests.map((r) => r.index),
      );
    } catch (e) {
      return Promise.reject(e);
    }
    return this.inTurn(space, 'device prefetch', () => prefetchPages(this, space, requests, servicer));
  }

  /** Runs on one space take turns: they share its page table and its pending grants. */
  private inTurn<T>(space: DevicePageTable, what: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.running.get(space.id) ?? Promise.resolve();
    const id = space.id;
    // Counted until the caller's await resumes (finally runs first), so forget() right after is fine.
    this.kernelsOn.set(id, (this.kernelsOn.get(id) ?? 0) + 1);
    const run = prev
      .then(() => this.guard(what, fn))
      .finally(() => {
        const n = (this.kernelsOn.get(id) ?? 1) - 1;
        if (n > 0) this.kernelsOn.set(id, n);
        else this.kernelsOn.delete(id);
      });
    const settled = run.then(
      () => {},
      () => {},
    );
    this.running.set(space.id, settled);
    void settled.then(() => {
      if (this.running.get(space.id) === settled) this.running.delete(space.id);
    });
    return run;
  }

  /** @internal replay.ts: append a fault batch record. */
  logBatch(rec: FaultBatchRecord): void {
    this.batchLog.push(rec);
    if (this.batchLog.length > MAX_BATCH_RECORDS)
      this.batchLog.splice(0, this.batchLog.length - MAX_BATCH_RECORDS);
  }

  /** Counters and derived figures for --stats. */
  stats(): Record<string, number> {
    return {
      ...this.counters,
      framesUsed: this.pool.devicePages - this.pool.freeCount,
      framesTotal: this.pool.devicePages,
    };
  }

  // ---- detach and loss ----

  /**
   * Orderly detach (device hot-unplug): revoke every page of every space, hand all frames to the
   * eviction hook (dirty ones are copied back), free them. Returns what was handed over.
   */
  detach(): Promise<EvictedFrame[]> {
    return this.guard('detach device', async () => {
      const owned = this.pool.ownedFrames().filter((f) => {
        const o = this.pool.owner(f)!;
        return this.spaces.get(o.space)?.entries.get(o.index)?.frame === f;
      });
      return owned.length ? this.evictFrames(owned) : [];
    });
  }

  /** Free the GPU buffers (the GpuDevice stays the caller's, and its copy rings). */
  destroy(): void {
    this.unsubscribeLost();
    if (this.gpu.lost) return;
    this.copier.forget(this.pool);
    for (const t of this.spaces.values()) t.destroy();
    this.pool.destroy();
    this.updater.destroy();
    this.launchBuffers.destroy();
  }

  /** The error for a lost device: EIO naming the pages whose device-written data went with it. */
  lostError(what: string, cause?: unknown): HmmlabError {
    const reason = this.lostReason ?? this.gpu.lostReason ?? 'device lost';
    const lost: string[] = [];
    for (const t of this.spaces.values()) {
      const dirty = [...t.dirty].filter((i) => t.entries.has(i));
      const writable = [...t.entries].filter(([i, e]) => e.perm === 'rw' && !t.dirty.has(i)).map(([i]) => i);
      if (dirty.length) lost.push(`space ${t.id} pages ${formatPages(dirty)} (written by the device)`);
      if (writable.length)
        lost.push(`space ${t.id} pages ${formatPages(writable)} (device-writable, possibly written)`);
    }
    const code: Errno = lost.length ? 'EIO' : 'EGPU';
    const msg = lost.length
      ? `${what}: GPU device lost (${reason}); device data not copied back is lost: ${lost.join('; ')}`
      : `${what}: GPU device lost (${reason}); it held no dirty pages`;
    return new HmmlabError(code, msg, cause === undefined ? undefined : { cause });
  }

  /** A table that this device forgot (or never made) is refused before it reaches the GPU. */
  private own(space: DevicePageTable, what: string): void {
    if (this.spaces.get(space.id) !== space) {
      throw new HmmlabError(
        'EINVAL',
        `${what}: device address space ${space.id} is not live on this device (forgotten at unmount?)`,
      );
    }
  }

  private checkLost(what: string): void {
    if (this.lostReason !== undefined || this.gpu.lost) throw this.lostError(what);
  }

  /** Run `fn`; if the device was lost meanwhile, whatever failed becomes the device-loss error. */
  private async guard<T>(what: string, fn: () => Promise<T>): Promise<T> {
    this.checkLost(what);
    try {
      return await fn();
    } catch (e) {
      if (await this.deviceGone(e)) {
        if (
          e instanceof HmmlabError &&
          (e.code === 'EIO' || e.code === 'EGPU') &&
          /device lost/.test(e.message)
        ) {
          throw this.lostError(what, e);
        }
        throw this.lostError(`${what} (${errorMessage(e)})`, e);
      }
      throw e;
    }
  }

  /**
   * Whether the device is lost, giving Dawn a moment to deliver the loss after a failed wait. A
   * GPU error or a timeout may be the loss itself, not delivered yet: wait up to 250 ms for it. Any
   * other failure (an injected one, a bad argument) is not caused by a loss; Dawn delivers one that
   * already happened within an event-loop turn, so a couple of turns tell.
   */
  private async deviceGone(e: unknown): Promise<boolean> {
    if (this.lostReason !== undefined || this.gpu.lost) return true;
    const gpuError =
      !isHmmlabError(e) || (injectedPoint(e) === undefined && (e.code === 'EGPU' || e.code === 'ETIMEDOUT'));
    if (!gpuError) {
      for (let turn = 0; turn < 2 && !this.gpu.lost; turn++) await new Promise((r) => setImmediate(r));
      return this.lostReason !== undefined || this.gpu.lost;
    }
    let timer: NodeJS.Timeout | undefined;
    const gone = await Promise.race([
      this.gpu.device.lost.then(() => true),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), 250);
      }),
    ]);
    clearTimeout(timer);
    return gone;
  }

  /**
   * PTE ops, one dispatch. With `shootdown` or `wantOld`, it waits for a readback submitted with
   * it (the old PTEs): its map says the GPU has done everything queued before, so no launch can
   * still use the old permission (the device TLB shootdown).
   */
  private async pteOps(space: DevicePageTable, ops: PteOp[], shootdown: boolean, wantOld: boolean) {
    if (ops.length === 0) return wantOld ? new Uint32Array(0) : null;
    let olds: Uint32Array | null = null;
    if (shootdown || wantOld) {
      // A readback ring buffer holds the old PTEs of this many ops at once.
      const per = Math.floor(this.copier.ringBytes / 4);
      olds = new Uint32Array(ops.length);
      for (let k = 0; k < ops.length; k += per) {
        const part = ops.slice(k, k + per);
        await this.gpu.scoped('device page table update', () =>
          this.copier.read(this.pool, [], { head: this.pteHead(space, part, (o) => olds!.set(o, k)) }),
        );
      }
    } else {
      await this.gpu.scoped('device page table update', () => this.updater.submit(space, ops));
    }
    this.counters.pteUpdates += ops.length;
    if (shootdown) this.counters.shootdowns++;
    return olds;
  }

  private async readPtes(space: DevicePageTable, first: number, last: number): Promise<Uint32Array> {
    if (!Number.isInteger(first) || !Number.isInteger(last) || first < 0 || last < first) {
      throw new HmmlabError('EINVAL', `page range ${first}..${last} is not valid`);
    }
    space.ensureCapacity(last + 1);
    const bytes = await this.gpu.readBuffer(space.pte, first * 4, (last - first + 1) * 4);
    return new Uint32Array(bytes.buffer, bytes.byteOffset, last - first + 1);
  }

  /** The device address spaces alive now, for the invariant checker (it reads every page table whole). */
  liveSpaces(): DevicePageTable[] {
    return [...this.spaces.values()];
  }

  /** Whether an owner (a policy) registered an eviction hook for space `id`: it is someone's. */
  hasOwner(id: number): boolean {
    return this.evictionHooks.has(id);
  }
}

export type { InstalledPte };

/**
 * The grants of `asked` not installed yet, copied: a change takes them back (or narrows them to
 * read-only) and restore() puts them back as they were.
 */
export function pendingOf(space: DevicePageTable, asked: readonly number[]): Map<number, InstalledPte> {
  const out = new Map<number, InstalledPte>();
  for (const i of asked) {
    const p = space.pending.get(i);
    if (p) out.set(i, { ...p });
  }
  return out;
}

/** A PteChange: the page, its frame, the DIRTY bit of its old PTE, the permission before, its pending grant. */
function change(
  index: number,
  frame: number,
  old: number,
  perm: 'ro' | 'rw',
  pending?: InstalledPte,
): PteChange {
  return { index, frame, dirty: pteDirty(old), perm, ...(pending ? { pending } : {}) };
}
