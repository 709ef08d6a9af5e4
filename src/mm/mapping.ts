/**
 * struct address_space: the per-file page-cache index (i_pages), the CPU mappings of the file
 * (i_mmap, which the rmap walks), the readahead state and the shadow entries left by reclaim, and
 * the file's locks (docs/ARCHITECTURE.md, lock order): the inode's i_rwsem (writers of the file's
 * data and size: write(2), truncate, punch, fallocate, direct writes), invalidate_lock (shared by
 * the paths that bring pages in: reads, faults, device kernel runs; exclusive for the paths that
 * take a range out: truncate, punch, the direct write's invalidation) and i_mmap_rwsem (the rmap).
 */
import { I_RWSEM, INVALIDATE_LOCK } from '../lock/order.ts';
import { RwSemaphore } from '../lock/rwsem.ts';
import type { CoherencePolicy } from '../policy/policy.ts';
import type { VmArea } from './memory.ts';
import type { PageCache } from './pagecache.ts';
import type { AddressSpace, AddressSpaceOps, XaEntry } from './types.ts';

/** struct file_ra_state (mm/readahead.c): the current window and where the last read ended. */
export interface FileRaState {
  /** First page of the current window. */
  start: number;
  /** Pages in the current window; 0 after a random miss (the window was reset). */
  size: number;
  /** Page index of the last page read (-1: none yet). */
  prev_index: number;
}

let nextMappingId = 1;

export class Mapping implements AddressSpace {
  readonly id = nextMappingId++;
  readonly i_pages = new Map<number, XaEntry>();
  size: number;
  /** Every VmArea that maps this file (the file rmap walks this, as rmap_walk_file walks i_mmap). */
  readonly i_mmap = new Set<VmArea>();
  /** Indices whose page reclaim evicted (shadow entries, for workingset_refault). */
  readonly shadows = new Set<number>();
  readonly ra: FileRaState = { start: 0, size: 0, prev_index: -1 };
  /** inode->i_rwsem. */
  readonly i_rwsem = new RwSemaphore(I_RWSEM);
  /** mapping->invalidate_lock. */
  readonly invalidate_lock = new RwSemaphore(INVALIDATE_LOCK);
  /**
   * i_mmap_rwsem, the lock of i_mmap (rmap.ts i_mmap_locked): the rmap walks hold it shared,
   * adding or removing a VmArea exclusive. Every holder is synchronous (no await inside: the one
   * event loop runs them one at a time), so it is never contended and needs no queue: this object
   * is its identity for lockdep.
   */
  readonly i_mmap_rwsem = { lock: 'i_mmap_rwsem' };

  constructor(
    readonly host: PageCache,
    readonly name: string,
    readonly a_ops: AddressSpaceOps,
    size: number,
  ) {
    this.size = size;
  }

  get pageSize(): number {
    return this.host.pageSize;
  }

  get policy(): CoherencePolicy {
    return this.host.policy;
  }
}

/** Every exported mm function takes the public AddressSpace type; this recovers the implementation. */
export function asMapping(m: AddressSpace): Mapping {
  if (!(m instanceof Mapping)) throw new TypeError(`address_space ${m.name} is not an hmmlab Mapping`);
  return m;
}
