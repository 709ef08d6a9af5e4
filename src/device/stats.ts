/**
 * Device counters, and one record per fault batch as Allen & Ge's UVM study logs them (faults raw,
 * duplicate, unique; bytes moved; service time, copy time; the fetch and the GPU time of the launch
 * the faults came from). A prefetch's service batches are recorded too, with kernel 'prefetch'.
 */

export interface DeviceCounters {
  /** Threads that faulted (every access that found no permission). */
  faultsRaw: number;
  /** Faults the host serviced after in-kernel and host coalescing: one per page and launch. */
  faultsUnique: number;
  /** faultsRaw - faultsUnique. */
  faultsDuplicate: number;
  faultsRead: number;
  faultsWrite: number;
  /** Faults whose service failed (EFAULT: the access fails, its work is not retried). */
  faultsFailed: number;
  /** Faults left for the next replay: an invalidation raced with their service, or no frame was free. */
  faultsRetried: number;
  /** Of those, grants whose install lost the race with an invalidation (mmu_interval_read_retry). */
  mmuIntervalRetries: number;
  batches: number;
  /** Kernel dispatches, first launches included. */
  launches: number;
  /** Dispatches after the first of a chunk, for unfinished work. */
  replays: number;
  /** Chunks of kernel work run to the end (an op longer than a chunk runs several, one after another). */
  chunks: number;
  kernels: number;
  bytesHostToDevice: number;
  bytesDeviceToHost: number;
  copiesToDevice: number;
  copiesFromDevice: number;
  evictions: number;
  evictionsDirty: number;
  /** PTE updates ordered on the queue, and those that waited for the device (shootdowns). */
  pteUpdates: number;
  shootdowns: number;
  revocations: number;
  writeProtects: number;
  copyMs: number;
  /** Fault service, batch by batch (its copies included: copyMs counts those too). */
  serviceMs: number;
  /** Launches: dispatch, the kernel, and the fault buffer read back (GPU time as the host sees it). */
  launchMs: number;
  /** Of launchMs, the launches after a chunk's first (replays). */
  replayMs: number;
  /** The launches' compute passes as the GPU timed them (timestamp queries; 0 where the adapter has none). */
  launchGpuMs: number;
  /** Prefetches (prefetchPages calls), their service batches and the pages they mapped. */
  prefetches: number;
  prefetchBatches: number;
  prefetchPages: number;
}

export interface FaultBatchRecord {
  kernel: string;
  space: number;
  /** The chunk (0-based), the launch (1-based, over the run) and the batch (0-based, over the run). */
  chunk: number;
  launch: number;
  batch: number;
  faultsRaw: number;
  faultsDuplicate: number;
  faultsUnique: number;
  read: number;
  write: number;
  failed: number;
  retried: number;
  bytesHostToDevice: number;
  bytesDeviceToHost: number;
  serviceMs: number;
  copyMs: number;
  /** The launch whose faults this batch came from: host time around the GPU's (readback, parse), and the GPU's. */
  fetchMs: number;
  launchGpuMs: number;
}

export function zeroCounters(): DeviceCounters {
  return {
    faultsRaw: 0,
    faultsUnique: 0,
    faultsDuplicate: 0,
    faultsRead: 0,
    faultsWrite: 0,
    faultsFailed: 0,
    faultsRetried: 0,
    mmuIntervalRetries: 0,
    batches: 0,
    launches: 0,
    replays: 0,
    chunks: 0,
    kernels: 0,
    bytesHostToDevice: 0,
    bytesDeviceToHost: 0,
    copiesToDevice: 0,
    copiesFromDevice: 0,
    evictions: 0,
    evictionsDirty: 0,
    pteUpdates: 0,
    shootdowns: 0,
    revocations: 0,
    writeProtects: 0,
    copyMs: 0,
    serviceMs: 0,
    launchMs: 0,
    replayMs: 0,
    launchGpuMs: 0,
    prefetches: 0,
    prefetchBatches: 0,
    prefetchPages: 0,
  };
}

/** after - before, counter by counter: what one kernel run (or one batch) cost. */
export function diffCounters(after: DeviceCounters, before: DeviceCounters): DeviceCounters {
  const out = zeroCounters();
  for (const k of Object.keys(out) as (keyof DeviceCounters)[]) out[k] = after[k] - before[k];
  return out;
}
