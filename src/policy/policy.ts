/**
 * The seam between the page cache (src/mm) and a coherence policy (src/policy/mirror.ts: Kara's
 * mirror; src/policy/migrate.ts: Glisse's migrate). Every CPU path in src/mm calls these hooks at the
 * point where the schemes need to act, and never branches on the policy's name: a hook a scheme does
 * not need is optional, and src/mm asks whether the policy has it. The host-only policy
 * (`hostOnlyPolicy`) makes every hook a no-op, which is what issue 3's page cache runs with.
 *
 * Vocabulary (docs/DESIGN.md's state table): host page A (`Page`, in the address_space's xarray),
 * device copy A' (a frame in GPU memory, owned by the policy), device entry E (an xarray entry
 * that says "this index's data lives on the device": left when A is reclaimed while A' holds data).
 */
import type { AddressSpace, DeviceEntry, Page } from '../mm/types.ts';

/** Why the CPU needs a page's data: counters and snapshots name the path. */
export type CpuAccess =
  | 'read' // read(2)
  | 'readahead'
  | 'fault' // mmap read fault
  | 'fault-around'
  | 'write-partial' // write(2) of part of a page: the rest of the page must be read first
  | 'writeback' // writeback, fsync, dropcaches of a dirty page
  | 'direct-io' // the write-back-and-invalidate pass before O_DIRECT
  | 'truncate' // a partial page at the new EOF, punch edges
  | 'unmount';

/** Who is about to write: write(2), an mmap write fault, or truncate/punch zeroing part of a page. */
export type CpuWrite = 'write' | 'fault' | 'truncate';

/** Why a range leaves the cache: truncate, punch or a direct write (after writeback), or unmount. */
export type InvalidateWhy = 'invalidate' | 'unmount';

/** One part of a device entry's page written through a bounce page (write(2), truncate's zeroing). */
export interface BounceWrite {
  entry: DeviceEntry;
  /** Offset within the page, and the bytes that land there (at most to the end of the page). */
  offset: number;
  bytes: Uint8Array;
}

export interface CoherencePolicy {
  readonly name: string;

  /**
   * The CPU needs the current data of these pages of `mapping` (all resident host pages, locked by
   * the caller). Where the device holds newer data (A not uptodate, A' rw), write-protect A' on the
   * device, copy A' -> A, mark A uptodate and dirty. Batched: one call for a whole range.
   */
  cpuNeedsData(mapping: AddressSpace, pages: Page[], why: CpuAccess): Promise<void>;

  /**
   * readpage found a device entry at `entry.index` instead of a page (A reclaimed, data on the
   * device): fill `page` (newly allocated, locked, not yet uptodate) from the device. After it,
   * the page is uptodate; dirty when the device copy was dirty. Returns false if the device no
   * longer holds the data (the caller then reads the disk).
   */
  readpageFromDevice(mapping: AddressSpace, entry: DeviceEntry, page: Page): Promise<boolean>;

  /**
   * readpageFromDevice for a batch (optional; readahead over device entries uses it): fill each
   * page from its entry, one answer per entry (false: read the disk), with one copy for the batch.
   */
  readpagesFromDevice?(mapping: AddressSpace, entries: DeviceEntry[], pages: Page[]): Promise<boolean[]>;

  /**
   * The CPU is about to write these pages (write(2), an mmap write fault): remove the device's
   * access to them, copying back first what the device wrote. Called after cpuNeedsData for the
   * pages the write does not cover whole. `why` names the path (the scheme's cpu-write or
   * cpu-write-fault row).
   */
  cpuWillWrite(mapping: AddressSpace, pages: Page[], why: CpuWrite): Promise<void>;

  /**
   * read(2) of device entries, for a policy that serves it through a bounce page (Glisse's scheme;
   * optional): the bytes of each entry's page, copied from the device without allocating A and
   * without taking the page from the device. One copy for the batch. A failure changes nothing.
   * null for an entry the device no longer holds (it was lost with nothing on it): the caller reads
   * that page the usual way. Without the hook, read(2) brings the page back (readpageFromDevice).
   */
  bounceRead?(mapping: AddressSpace, entries: DeviceEntry[]): Promise<(Uint8Array | null)[]>;

  /**
   * write(2) (and truncate's zeroing) of device entries through a bounce page (optional, as
   * bounceRead): the bytes land in the device's copy, which stays on the device, now newer than the
   * disk. A write of part of a page reads the rest of it first. A failure changes nothing. false
   * for an entry the device no longer holds: the caller writes that page the usual way.
   */
  bounceWrite?(mapping: AddressSpace, writes: BounceWrite[]): Promise<boolean[]>;

  /**
   * Writeback of device entries (A reclaimed, the device may hold data the disk lacks): for each
   * entry whose data the disk lacks, bring its bytes back through a bounce buffer and write them with
   * `writepage(index, bytes)`; the device copy is write-protected, and counts as clean only once its
   * write landed (folio_clear_dirty_for_io hands the dirty state on to the I/O). A failed copy or
   * write leaves that entry as it was, still to be written back; the first error is thrown after
   * the other entries were tried. Returns the entries written. One shootdown, one copy a batch.
   */
  writebackDeviceEntries(
    mapping: AddressSpace,
    entries: DeviceEntry[],
    writepage: (index: number, data: Uint8Array) => Promise<void>,
  ): Promise<number>;

  /**
   * Drop every device copy and device entry of pages [first, last] of `mapping` (truncate, punch,
   * direct-I/O write, unmount, after the range has been written back). Device entries are removed
   * from the xarray by the caller.
   */
  invalidateRange(mapping: AddressSpace, first: number, last: number, why: InvalidateWhy): Promise<void>;

  /**
   * Host reclaim (or dropcaches) wants page `page` (locked by the caller, unmapped from the CPU, not
   * under writeback; clean, or S: dirty and not uptodate, the device holding its data).
   * 'free': drop it (no device copy). 'device-entry': the device holds the data, replace A by a
   * device entry and keep A'. 'keep': it cannot go now.
   */
  reclaimDecision(mapping: AddressSpace, page: Page): 'free' | 'device-entry' | 'keep';

  /**
   * reclaimDecision said 'device-entry': give the entry that replaces `page` (locked, unmapped; clean,
   * or S: dirty and not uptodate, its data on the device) in the xarray. src/mm then frees the host
   * page and stores the entry; the policy keeps A' (its dirty state included). Added in issue 3.
   */
  makeDeviceEntry(mapping: AddressSpace, page: Page): DeviceEntry;

  /** Counters for --stats (device faults, copies, revocations, ...). */
  stats(): Record<string, number>;
}

/** Issue 3's page cache: no device, every hook a no-op. */
export const hostOnlyPolicy: CoherencePolicy = {
  name: 'none',
  async cpuNeedsData() {},
  async readpageFromDevice() {
    return false;
  },
  async cpuWillWrite() {},
  async writebackDeviceEntries() {
    return 0;
  },
  async invalidateRange() {},
  reclaimDecision: () => 'free',
  makeDeviceEntry(_mapping, page) {
    throw new Error(`host-only policy has no device to leave page ${page.index} on`);
  },
  stats: () => ({}),
};
