/**
 * The lock classes of the concurrent engine and their one order, as docs/ARCHITECTURE.md ("Threads
 * and locks", lock order) writes it down; test/lock/order.test.ts checks that the two agree.
 * Outermost first: a task holding one of these may take only classes after it (page locks among
 * themselves in ascending order). The default lockdep knows this order from the start.
 */
import { LockClass, lockdep } from './lockdep.ts';

/** The mount: syscalls and faults hold it shared, remount and unmount exclusive (as s_umount). */
export const MOUNT_LOCK = new LockClass('mount');
/** The inode's lock (inode->i_rwsem): write(2), truncate, punch, fallocate and direct writes exclusive. */
export const I_RWSEM = new LockClass('i_rwsem');
/** The mm's mapping list: CPU faults shared, mmap and munmap exclusive (mmap_lock). */
export const MMAP_LOCK = new LockClass('mmap_lock');
/** mapping->invalidate_lock: truncate, punch and direct-I/O invalidation exclusive, faults shared. */
export const INVALIDATE_LOCK = new LockClass('invalidate_lock');
/** PG_locked, by page index (pageLockOrder): ascending. */
export const PAGE_LOCK = new LockClass('page lock', { ascending: true });
/** The file's rmap (i_mmap_rwsem): PTE walks (page_mkclean, try_to_unmap) shared, VmArea add/remove exclusive. */
export const I_MMAP_LOCK = new LockClass('i_mmap_rwsem');
/** The device page table of an address space: PTE installs (checked against the mmu_interval sequence) and invalidations. */
export const DEVICE_PT_LOCK = new LockClass('device page-table lock');

export const LOCK_ORDER: readonly LockClass[] = [
  MOUNT_LOCK,
  I_RWSEM,
  MMAP_LOCK,
  INVALIDATE_LOCK,
  PAGE_LOCK,
  I_MMAP_LOCK,
  DEVICE_PT_LOCK,
];

/**
 * A page lock's place in the ascending order: by mapping, then index (two files' pages nest in
 * mapping id order, as the kernel orders two inodes by address).
 */
export function pageLockOrder(mappingId: number, index: number): number {
  return mappingId * 2 ** 32 + index;
}

lockdep.declareOrder(LOCK_ORDER, 'docs/ARCHITECTURE.md');
