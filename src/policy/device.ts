/**
 * What a policy with a device offers the filesystem beyond the CoherencePolicy hooks: device
 * kernels on a file's pages (devwrite, devread, atomic, checksum), the device half of a page-state
 * snapshot, and the mount's lock for work started outside an operation (detach). HmmFs asks
 * `isDevicePolicy` and never branches on a policy's name.
 */
import type { DeviceMemory, DeviceOutputSink, KernelKind, KernelParams } from '../device/index.ts';
import type { Errno } from '../errors.ts';
import type { FaultInjector } from '../inject/inject.ts';
import type { AddressSpace } from '../mm/types.ts';
import type { CoherencePolicy } from './policy.ts';
import type { SchemeTable } from './scheme.ts';

/** What one device kernel run cost and what failed (the contract's DeviceRun). */
export interface DeviceRun {
  /** Threads that faulted (raw), and faults serviced after coalescing. */
  faults: number;
  uniqueFaults: number;
  batches: number;
  replays: number;
  bytesToDevice: number;
  bytesToHost: number;
  /** Accesses refused (page_mkwrite said no): their work failed, the rest landed. */
  failed: { index: number; code: Errno; message: string }[];
}

/** A kernel run's result as the policy hands it to the filesystem. */
export interface DeviceKernelResult {
  run: DeviceRun;
  /** devread without a sink: the bytes. */
  bytes?: Uint8Array;
  /** checksum: per page of the range, wrapping sum and xor of its words. */
  checksums?: { index: number; sum: number; xor: number }[];
}

/** What one prefetch did (DevicePolicy.prefetch). */
export interface DevicePrefetch {
  /** Pages of the range, and those that needed service (not mapped with the access asked). */
  pages: number;
  serviced: number;
  /** Pages mapped by it (the rest were refused, or found no frame). */
  granted: number;
  /** Write prefetches that page_mkwrite refused: the pages are as they were. */
  refused: { index: number; code: Errno; message: string }[];
  batches: number;
  bytesToDevice: number;
}

/** The device columns of a snapshot row. */
export interface DevicePageColumns {
  dev: '-' | 'ro' | 'rw';
  frame: number | null;
  /** The device's DIRTY bit (as last read back): it wrote the page since it was last cleaned. */
  devDirty: boolean;
}

/** A policy's record of one device copy A', as the invariant checker reads it. */
export interface DeviceCopyRecord {
  readonly frame: number;
  readonly perm: 'ro' | 'rw';
  /** A' holds data the disk lacks even where the device never wrote it. */
  readonly diskStale: boolean;
}

/** What the invariant checker (invariants.ts) reads of a policy with a device, read-only. */
export interface DeviceCheckView {
  /** The device memory whose page tables and frames hold the policy's copies. */
  readonly memory: DeviceMemory;
  /** The policy's record of page `index` of `mapping`, if it holds a device copy of it. */
  record(mapping: AddressSpace, index: number): DeviceCopyRecord | undefined;
  /** Whether device address space `id` is this policy's (another mount may share the device). */
  ownsSpace(id: number): boolean;
}

export interface DevicePolicy extends CoherencePolicy {
  readonly hasDevice: true;
  /**
   * Run a device kernel over `mapping`'s pages; faults are serviced by the policy. A devread with
   * a `sink` streams its bytes there chunk by chunk (DeviceKernelResult.bytes is then absent).
   */
  runDeviceKernel(
    mapping: AddressSpace,
    kind: KernelKind,
    params: KernelParams,
    sink?: DeviceOutputSink,
  ): Promise<DeviceKernelResult>;
  /**
   * Prefetch pages [first, last] of `mapping` to the device without a kernel (cudaMemPrefetchAsync),
   * serviced batch by batch as device faults of that access would be (mirror: A -> A' read-only, or
   * writable with `write`; migrate: the page moves) and mapped.
   */
  prefetch(mapping: AddressSpace, first: number, last: number, write: boolean): Promise<DevicePrefetch>;
  /** The device half of page `index`'s snapshot row (host shadow: no GPU round trip). */
  devicePage(mapping: AddressSpace, index: number): DevicePageColumns;
  /** Indices of `mapping` the device holds a copy of, ascending. */
  deviceIndices(mapping: AddressSpace): number[];
  /** HmmFs hands its mutex over at mount, for work the policy starts on its own (detach). */
  setSerializer(serialize: <T>(fn: () => Promise<T>) => Promise<T>): void;
  /** HmmFs hands its fault injector over at mount (its device's copies, frames and launches). */
  setInjector(inject: FaultInjector): void;
  /** Orderly detach (device hot-unplug): every device-held page comes back first. */
  detach(): Promise<void>;
  /** The policy's scheme: its legal page states, its rows (the invariant checker reads them). */
  readonly table: SchemeTable;
  /** The device memory and the records, for the checker to compare with the GPU itself. */
  checkView?(): DeviceCheckView;
}

export function isDevicePolicy(p: CoherencePolicy): p is DevicePolicy {
  return (p as Partial<DevicePolicy>).hasDevice === true;
}
