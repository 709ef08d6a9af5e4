/**
 * The page cache's core objects, as the policy seam (src/policy/policy.ts) sees them.
 * src/mm owns them; a policy reads flags and calls the page cache's functions, and never
 * keeps its own copy of this state.
 */

/** Page flags, as include/linux/page-flags.h names them. */
export const PG_locked = 1 << 0;
export const PG_uptodate = 1 << 1;
export const PG_dirty = 1 << 2;
export const PG_writeback = 1 << 3;
export const PG_lru = 1 << 4;
export const PG_referenced = 1 << 5;

/** A host page A: a slot of the shared page pool, cached at `index` of `mapping`. */
export interface Page {
  readonly kind: 'page';
  readonly mapping: AddressSpace;
  readonly index: number;
  /** Slot in the host page pool (the SharedArrayBuffer that CPU worker threads will map). */
  readonly slot: number;
  flags: number;
  /** Number of CPU PTEs that map this page (the rmap walks them). */
  mapcount: number;
  /** The page's bytes: a view into the shared page pool. */
  readonly data: Uint8Array;
}

/**
 * Kara's exceptional entry: "the data of this index lives in the device". It replaces a page that
 * reclaim evicted while the device copy A' held its data. `frame` is opaque to src/mm.
 */
export interface DeviceEntry {
  readonly kind: 'device';
  readonly index: number;
  /** Owned by the policy (e.g. the device frame); src/mm never reads it. */
  readonly token: unknown;
}

export type XaEntry = Page | DeviceEntry;

/** Per-file page-cache state (struct address_space). */
export interface AddressSpace {
  /** Stable id: device page tables and op logs key on it. */
  readonly id: number;
  readonly name: string;
  readonly pageSize: number;
  /** The index: page index -> page or device entry (struct xarray i_pages). */
  readonly i_pages: Map<number, XaEntry>;
  /** i_size, in bytes. */
  size: number;
}

/**
 * address_space_operations plus the filesystem's block hooks: how src/mm reaches the backing store.
 * src/fs implements it over a real file; every call is real I/O (pread/pwrite/fdatasync).
 */
export interface AddressSpaceOps {
  /** Read page `index` into `buf` (bytes past EOF are zero). Returns the bytes read from disk. */
  readpage(index: number, buf: Uint8Array): Promise<number>;
  /**
   * Read pages first, first + 1, ... into `bufs` (a page each) in one go (readahead's
   * ->readahead, one preadv), bytes past EOF zero. Optional: without it, readpage each.
   */
  readpages?(first: number, bufs: Uint8Array[]): Promise<void>;
  /** Write the first `len` bytes of `buf` as page `index` (len: the part below i_size). */
  writepage(index: number, buf: Uint8Array, len: number): Promise<void>;
  /** The filesystem's page_mkwrite: make sure page `index` has a block (ENOSPC past the budget). */
  page_mkwrite(index: number): Promise<void>;
  /** Reserve blocks for every page in [first, last] or none (write(2) and mmap stores): ENOSPC. */
  reserve_blocks(first: number, last: number): Promise<void>;
  /** Free the blocks of pages [first, last] (truncate, punch of whole pages). */
  free_blocks(first: number, last: number): void;
  /** Set the backing file's size to i_size (ftruncate). */
  set_size(size: number): Promise<void>;
  /** Write zeros to the backing file over [off, off + len) (punch hole). */
  zero_range(off: number, len: number): Promise<void>;
  /** Direct I/O on the backing file: pread/pwrite bypassing the page cache. */
  read_direct(off: number, buf: Uint8Array): Promise<number>;
  write_direct(off: number, buf: Uint8Array): Promise<void>;
  /** fdatasync(2). */
  fsync(): Promise<void>;
}

/** A page's host state (docs/DESIGN.md): absent, clean, dirty, stale (device newer), device entry. */
export type HostState = '-' | 'C' | 'D' | 'S' | 'E';

/** One row of a page-state snapshot (like test_hmm's SNAPSHOT); the device half adds its columns. */
export interface PageSnapshot {
  index: number;
  host: HostState;
  /** Flag letters: L locked, U uptodate, D dirty, W writeback, R referenced, A on the LRU. */
  flags: string;
  mapcount: number;
  /** The widest CPU PTE permission over every VmArea mapping the page. */
  cpu: '-' | 'ro' | 'rw';
}
