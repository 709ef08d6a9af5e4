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
