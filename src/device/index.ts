/**
 * hmmlab's device: real GPU memory playing Linux's un-addressable device memory.
 *
 * What it is
 *   - Device memory (frames.ts): `devicePages` frames of `pageSize` bytes in GPU storage buffers
 *     (several where one binding cannot hold them all), an LRU of frames and device eviction through
 *     the owner's hook: the victim's PTE is revoked (shootdown) first, then the hook copies a dirty
 *     frame back (a clean one is dropped), then the frame is reused.
 *   - Device page tables (pagetable.ts, pte.ts): one per device address space (keyed by the
 *     AddressSpace id), a u32 PTE per page index in a GPU buffer: frame, READ, WRITE, and DIRTY,
 *     which a kernel sets on its first store. Changes are ordered on the GPU queue by a small
 *     kernel that keeps DIRTY and returns the old PTE; write-protect and revoke resolve only after
 *     the queue drained (device TLB shootdown). Invalidations bump a per-space sequence number
 *     (mm/hmm.c's mmu_interval pattern) that fault service checks before installing PTEs.
 *     A space lives until its file leaves the cache: forget(id) (called by the device policy when
 *     unmount drops the whole file) destroys its page table and fault buffer; spaceCount says how
 *     many are alive.
 *   - The device MMU in WGSL (shaders/mmu.wgsl, included by every kernel): translate(page, write)
 *     -> frame, or record a fault (coalesced in-kernel per page and access, raw count kept), leave
 *     the thread's work undone and stop. It also holds the work-item prologue every kernel shares
 *     (mmu_word_item: skip done work, translate, mark refused work failed; mmu_item_done; mmu_end,
 *     which adds the invocation's privately counted raw faults to the buffer once), so a kernel
 *     is its grid-stride loop and its body.
 *   - Fault service and replay (replay.ts, fault.ts): launch, read the fault buffer back, coalesce,
 *     hand the faults to the owner's servicer in batches of `batchSize` (256, as NVIDIA UVM), install
 *     the PTEs it grants, replay the unfinished work until done. A refused access (EFAULT) fails its
 *     work only, reported naming the page. Counters and a record per fault batch (stats.ts);
 *     time is split into launchMs (dispatch to fault readback; per launch in KernelResult.launchMs),
 *     serviceMs (fault service) and copyMs (copies, inside service or not).
 *   - Batched copies (copy.ts): runs of consecutive frames, one writeBuffer per run host->device,
 *     one copyBufferToBuffer per run and one mapAsync per batch device->host.
 *   - Kernels (kernels.ts, shaders/): devwrite, devread, atomic, checksum; at least 16,384 threads
 *     where the work allows (grid-stride loops).
 *   - Device loss: every wait has a timeout; a loss becomes EIO naming the pages whose
 *     device-written data was lost (EGPU when none was).
 *
 * The owner (a device policy: src/policy/core.ts) supplies the fault service, as a driver does for NVIDIA UVM's
 * replayable faults or lib/test_hmm.c's dmirror:
 *
 *   const dm = await DeviceMemory.create(gpu, { devicePages: 256, pageSize: 4096, batchSize: 256 });
 *   dm.setEvictionHook(async (victims, dm) => {            // PTEs already revoked
 *     const dirty = victims.filter((v) => v.dirty);
 *     const pages = await dm.copyFromFrames(dirty.map((v) => v.frame));
 *     dirty.forEach((v, i) => copyBackToHostPage(v.space, v.index, pages[i]));
 *   });
 *   const space = dm.space(mapping.id);
 *   const servicer: FaultServicer = async (faults, ctx) => {
 *     const fresh = faults.filter((f) => !ctx.lookup(f.index));
 *     const frames = await ctx.allocFrames(fresh.map((f) => f.index));   // may evict
 *     ... page_mkwrite for write faults (may refuse: { ok: false, code: 'EFAULT', message }) ...
 *     ctx.memory.copyToFrames(fresh.map((f, i) => ({ frame: frames[i]!, data: hostPage(f.index) })));
 *     return faults.map((f) => ({ ok: true, frame: ..., perm: f.write ? 'rw' : 'ro' }));
 *   };
 *   const r = await dm.runKernel('devwrite', space, { off, len, tag }, servicer);
 *   r.counters, r.batches, r.failed, r.error, r.bytes (devread), r.checksums (checksum), r.launchMs
 *   await dm.protect(space, indices, { cleanDirty: true })  // -> { index, frame, dirty }[]
 *   await dm.revoke(space, indices); dm.freeFrames(frames)
 *   await dm.snapshot(space, first, last)                   // frame, perm, dirty per page
 *   dm.forget(mapping.id)                                   // at unmount, once no page is mapped
 *   await dm.detach()                                       // hot-unplug: every frame to the hook
 */
export {
  chooseUploadPath,
  type FrameRun,
  type FrameWrite,
  frameRuns,
  type UploadMeasure,
  type UploadPath,
} from './copy.ts';
export {
  coalesceFaults,
  type DeviceFault,
  faultBatches,
  faultLayout,
  formatPages,
  parseFaultEntries,
} from './fault.ts';
export { checkPageSize, type FrameOwner, FramePool, MAX_FRAME_BUFFERS } from './frames.ts';
export {
  chunkBytesFor,
  DEFAULT_CHUNK_BYTES,
  dispatchThreads,
  type KernelChunk,
  type KernelKind,
  type KernelParams,
  type KernelPlan,
  MAX_ATOMIC_BYTES,
  MAX_CHUNK_BYTES,
  MAX_DEVICE_PAGES,
  MIN_THREADS,
  patternByte,
  patternBytes,
  planChunks,
  planKernel,
  SLOT_TAG_MASK,
  SOFTWARE_CHUNK_BYTES,
  slotValue,
  wordChecksum,
} from './kernels.ts';
export {
  DEFAULT_BATCH_SIZE,
  DeviceMemory,
  type DeviceMemoryOptions,
  type DevicePageState,
  type EvictedFrame,
  type EvictionHook,
  type EvictionOutcome,
  type PteChange,
  type PullRequest,
  type PullResult,
  pendingOf,
} from './memory.ts';
export { DevicePageTable, type InstalledPte, type MapEntry } from './pagetable.ts';
export { type DevicePerm, pteDecode, pteEncode } from './pte.ts';
export type {
  DeviceOutputSink,
  FailedAccess,
  FaultEngineHost,
  FaultResolution,
  FaultServiceContext,
  FaultServicer,
  KernelResult,
  PrefetchResult,
} from './replay.ts';
export {
  DEFAULT_REPLAY_POLICY,
  parseReplayPolicy,
  REPLAY_POLICIES,
  type ReplayPolicy,
  VA_BLOCK_BYTES,
} from './replayPolicy.ts';
export { type DeviceCounters, type FaultBatchRecord, zeroCounters } from './stats.ts';
