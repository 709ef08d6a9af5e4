/**
 * Locks for the concurrent engine (issue 9): async sleeping locks that report to a lock-order
 * validator (lockdep.ts), and the one lock order (order.ts, written down in docs/ARCHITECTURE.md).
 */
export {
  type AcquireOptions,
  LockClass,
  type LockClassOptions,
  Lockdep,
  LockdepError,
  lockdep,
} from './lockdep.ts';
export { Mutex } from './mutex.ts';
export {
  DEVICE_PT_LOCK,
  I_MMAP_LOCK,
  I_RWSEM,
  INVALIDATE_LOCK,
  LOCK_ORDER,
  MMAP_LOCK,
  MOUNT_LOCK,
  PAGE_LOCK,
  pageLockOrder,
} from './order.ts';
export { RwSemaphore } from './rwsem.ts';
