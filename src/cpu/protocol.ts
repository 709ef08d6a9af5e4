/**
 * What the page-cache owner (the main thread) and the CPU worker threads say to each other, and the
 * shared words they say it through. A worker is a user thread of one process whose mm is the
 * owner's: every mapping is visible to every worker, a syscall is an RPC to the owner, and a load
 * or store through a mapping touches the host pool's bytes directly after an Atomics check of its
 * emulated PTE (src/mm/pte.ts). A missing permission is a CPU fault: an RPC to the owner, after
 * which the access runs again.
 *
 * Per-CPU words (one slot of CPU_SLOT_WORDS Int32 words per thread, a cache line apart so that
 * workers do not share lines): the access sequence (a seqcount: odd while the thread is inside an
 * access, even outside), the mapping and page index of the access in progress (for a shootdown
 * that only concerns some pages, and for naming a stuck access), and the owner's waiter count (a
 * leaving thread calls Atomics.notify only when the owner waits on it, as a futex waiters bit).
 */
import type { MessagePort } from 'node:worker_threads';
import type { WorkerStressParams, WorkerStressResult } from './stressLoop.ts';
import type { WatchRange, WatchResult } from './watch.ts';

/** Int32 words per CPU slot: 16 words = 64 bytes, one cache line. */
export const CPU_SLOT_WORDS = 16;
/** The access sequence: odd inside an access. */
export const SLOT_SEQ = 0;
/** The mapping id (vma_id) of the access in progress (valid while SLOT_SEQ is odd). */
export const SLOT_VMA = 1;
/** The page index of the access in progress. */
export const SLOT_INDEX = 2;
/** How many owner waits are parked on this slot's sequence (notify only when non-zero). */
export const SLOT_WAITERS = 3;

/** A shared mapping as a thread needs it: its PTE words and the pool they point into. */
export interface VmaDesc {
  /** The mapping's id, the same on every thread (vma_id of its PTE array). */
  id: number;
  /** The VmArea's PTE words (an Int32 per page: src/mm/pte.ts). */
  pte: SharedArrayBuffer;
  /** The mount's host page pool (one SharedArrayBuffer; a PTE's slot indexes it). */
  pool: SharedArrayBuffer;
  pageSize: number;
  nrPages: number;
  /** The file's name, for messages. */
  name: string;
}

/** What a thread needs from the owner to run its accesses: CPU faults and mapping lookups. */
export interface CpuFaultHandler {
  /**
   * handle_mm_fault: make page `index` of mapping `vmaId` present with the access asked for (or
   * fail: EFAULT with SIGBUS past EOF, SIGSEGV outside the mapping). Resolving says nothing about
   * the PTE now: the thread checks it again, and faults again if it was taken away meanwhile.
   */
  fault(vmaId: number, index: number, write: boolean): Promise<void>;
  /** The mapping with this id (a worker learns mappings made by other threads this way). */
  vma(vmaId: number): Promise<VmaDesc>;
}

/** The file syscalls, the same on both sides: the worker makes them, the owner serves them. */
export interface CpuSyscalls {
  open(name: string, create?: boolean): Promise<number>;
  close(fd: number): Promise<void>;
  read(fd: number, off: number, len: number): Promise<Uint8Array>;
  write(fd: number, off: number, bytes: Uint8Array): Promise<void>;
  fsync(fd: number): Promise<void>;
  truncate(fd: number, size: number): Promise<void>;
  /** fstat: the file's size in bytes. */
  size(fd: number): Promise<number>;
  /** O_DIRECT read and write (512-byte aligned). */
  readDirect(fd: number, off: number, len: number): Promise<Uint8Array>;
  writeDirect(fd: number, off: number, bytes: Uint8Array): Promise<void>;
  /** fallocate(PUNCH_HOLE | KEEP_SIZE), and fallocate(KEEP_SIZE): blocks reserved. */
  punchHole(fd: number, off: number, len: number): Promise<void>;
  fallocate(fd: number, off: number, len: number): Promise<void>;
}

const SYSCALLS = [
  'open',
  'close',
  'read',
  'write',
  'fsync',
  'truncate',
  'size',
  'readDirect',
  'writeDirect',
  'punchHole',
  'fallocate',
] as const;

/** The syscalls of `to`, as an object of plain functions (comlink serves own properties only). */
export function forwardSyscalls(to: CpuSyscalls): CpuSyscalls {
  const out: Record<string, unknown> = {};
  for (const name of SYSCALLS)
    out[name] = (...args: unknown[]) => (to[name] as (...a: unknown[]) => unknown)(...args);
  return out as unknown as CpuSyscalls;
}

/**
 * The owner's API as a worker calls it: the syscalls, mmap, and the CPU fault. The page cache
 * implements it (src/cpu/hmmfsOwner.ts over HmmFs today); file descriptors and mappings live in the
 * owner, as they live in the kernel.
 */
export interface CpuOwnerApi extends CpuFaultHandler, CpuSyscalls {
  /** A shared mapping of the file from offset 0 (default length: the file-size limit). */
  mmap(fd: number, length?: number): Promise<VmaDesc>;
  munmap(vmaId: number): Promise<void>;
}

/** What the owner hands a worker when it starts it (workerData). */
export interface CpuWorkerInit {
  /** This worker's CPU number: its slot in `seq`. */
  cpu: number;
  /** The per-CPU words of every thread (CPU_SLOT_WORDS Int32 a CPU). */
  seq: SharedArrayBuffer;
  /** The port the owner serves CpuOwnerApi on (comlink). */
  port: MessagePort;
}

/** Per-thread access counters. */
export interface CpuAccessStats {
  /** Page accesses made (each one entry into the access sequence). */
  accesses: number;
  /** CPU faults sent to the owner. */
  faults: number;
}

/**
 * A worker's API as the owner (or a test) drives it: the same syscalls (the worker makes them, as
 * a user thread would), its loads and stores, and a test hook that parks it inside an access.
 */
export interface CpuWorkerApi extends CpuSyscalls {
  /** The worker's thread id (worker_threads.threadId): answered once it is up. */
  hello(): number;
  /** mmap: the mapping's id. */
  mmap(fd: number, length?: number): Promise<number>;
  munmap(vmaId: number): Promise<void>;
  load(vmaId: number, off: number, len: number): Promise<Uint8Array>;
  store(vmaId: number, off: number, bytes: Uint8Array): Promise<void>;
  /** `times` atomic adds of `delta` to the u32 at `off` (4-aligned), each its own access; the last old value. */
  atomicAdd(vmaId: number, off: number, delta: number, times: number): Promise<number>;
  /** Test hook: see CpuMm.armStall. */
  armStall(vmaId: number, index: number, ctl: SharedArrayBuffer): void;
  stats(): CpuAccessStats;
  /** Load and compare `ranges` through mapping `vmaId` again and again until the stop word (watch.ts). */
  watch(vmaId: number, ranges: WatchRange[], ctl: SharedArrayBuffer): Promise<WatchResult>;
  /** hmmlab stress --concurrent: the worker's loop (stressLoop.ts), until the owner sets the stop word. */
  concurrentStress(o: WorkerStressParams): Promise<WorkerStressResult>;
}
