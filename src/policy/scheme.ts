/**
 * The vocabulary both coherence schemes are written in: a page's state (host A, device A', CPU
 * mappings), the events it meets, the work between two states (named for the kernel function that
 * does it) and the one order all work is done in. Each scheme is one table over it: Kara's mirror
 * (mirrorTable.ts) and Glisse's migrate (migrateTable.ts). The device-policy core (core.ts) reads a
 * page's state, asks its scheme's table for the row, and does the row's work; the invariant checker
 * asks the same table which states are legal.
 *
 * Host page A: '-' absent, 'C' uptodate clean, 'D' uptodate dirty, 'S' stale (not uptodate, dirty:
 * the device holds newer data; mirror only), 'E' device entry (A gone, data on the device).
 * Device copy A': '-' none, 'ro', 'rw'. CPU mappings of A: '-' none, 'ro', 'rw'.
 */

export type HostState = '-' | 'C' | 'D' | 'S' | 'E';
export type DevicePerm = '-' | 'ro' | 'rw';
export type CpuPerm = '-' | 'ro' | 'rw';

export interface PageState {
  host: HostState;
  dev: DevicePerm;
  cpu: CpuPerm;
}

export type DeviceEvent =
  | 'device-read-fault'
  | 'device-write-fault'
  | 'cpu-read' // read(2), readahead, the read half of a partial write(2) or a partial truncate
  | 'cpu-read-fault' // mmap read fault, fault-around: the data and a read-only PTE
  | 'cpu-write' // write(2): the CPU modifies the page's data
  | 'cpu-write-fault' // mmap write fault: a writable PTE
  | 'writeback' // writeback, fsync, direct-I/O read's flush
  | 'invalidate' // direct-I/O write, truncate, punch (after writeback)
  | 'host-reclaim'
  | 'device-evict' // device memory is full: a frame is taken back
  | 'device-evict-host-full' // ... while the host has no free page either (migrate: write to disk, drop)
  | 'unmount'; // and device detach

/** Every event, in the order the tables list them. */
export const DEVICE_EVENTS: readonly DeviceEvent[] = [
  'device-read-fault',
  'device-write-fault',
  'cpu-read',
  'cpu-read-fault',
  'cpu-write',
  'cpu-write-fault',
  'writeback',
  'invalidate',
  'host-reclaim',
  'device-evict',
  'device-evict-host-full',
  'unmount',
];

/** The work, named for the kernel function that would do it. */
export type Work =
  | 'readpage' // fill A from disk
  | 'alloc-page' // a fresh A (to receive the device's data, or for a write(2) of a whole page)
  | 'page_mkwrite' // the filesystem's permission for a device write (may refuse: ENOSPC, EROFS)
  | 'page_mkclean' // write-protect every CPU mapping of A
  | 'try_to_unmap' // clear every CPU mapping of A
  | 'copy-to-device' // A -> A'
  | 'device-protect' // write-protect A' (device TLB shootdown)
  | 'copy-back' // A' -> A (only what the device wrote, unless A is new)
  | 'bounce-read' // A' -> a bounce page -> the reader: A is not allocated, A' stays
  | 'bounce-write' // the writer's bytes -> a bounce page -> A' (a partial page is read first)
  | 'bounce-writeback' // A' -> a bounce page -> disk (A is E)
  | 'writepage' // A -> disk
  | 'device-revoke' // remove A' from the device page table (shootdown) and free its frame
  | 'device-entry' // A leaves the page cache and a device entry takes its place
  | 'drop-page'; // remove A from the page cache

/**
 * One order for all work: every row of every table lists its work in this order, so a policy may
 * do a whole batch of pages phase by phase (every page's page_mkclean, then one batched copy, ...)
 * and still do each page's work in the order its row asks. The tables' tests check it.
 */
export const WORK_ORDER: readonly Work[] = [
  'readpage',
  'alloc-page',
  'page_mkwrite',
  'page_mkclean',
  'try_to_unmap',
  'copy-to-device',
  'device-protect',
  'copy-back',
  'bounce-read',
  'bounce-write',
  'bounce-writeback',
  'writepage',
  'device-revoke',
  'device-entry',
  'drop-page',
];

export interface Transition {
  next: PageState;
  work: Work[];
}

/** A scheme: its legal states, its events and one transition function. */
export interface SchemeTable {
  readonly name: string;
  /** The events the scheme has a row for (every legal state meets each of them). */
  readonly events: readonly DeviceEvent[];
  isLegal(s: PageState): boolean;
  allLegalStates(): PageState[];
  /** What `event` does to a page in state `s`; throws on an illegal state (a bug, not a user error). */
  transition(s: PageState, event: DeviceEvent): Transition;
  /**
   * Whether a read-only device entry may hold data the disk lacks (migrate: a dirty page moved to
   * the device, or a write(2) bounced into A'); writeback then bounces it. Mirror: never (A' ro is
   * a copy of A, or of the disk once A is gone).
   */
  readonly dirtyReadOnlyEntries: boolean;
}

/** Legal states as rows of (host states, device permission, CPU permissions). */
export type LegalRows = ReadonlyArray<readonly [readonly HostState[], DevicePerm, readonly CpuPerm[]]>;

export function isLegalIn(rows: LegalRows, s: PageState): boolean {
  return rows.some(([hosts, dev, cpus]) => hosts.includes(s.host) && dev === s.dev && cpus.includes(s.cpu));
}

export function statesOf(rows: LegalRows): PageState[] {
  const out: PageState[] = [];
  for (const [hosts, dev, cpus] of rows)
    for (const host of hosts) for (const cpu of cpus) out.push({ host, dev, cpu });
  return out;
}

export const st = (host: HostState, dev: DevicePerm, cpu: CpuPerm): PageState => ({ host, dev, cpu });

/** The narrower of two CPU permissions. */
export const minCpu = (a: CpuPerm, b: CpuPerm): CpuPerm =>
  a === '-' || b === '-' ? '-' : a === 'ro' || b === 'ro' ? 'ro' : 'rw';

export function fmt(s: PageState): string {
  return `(A ${s.host}, A' ${s.dev}, CPU ${s.cpu})`;
}

/** The row a scheme has no event for (mirror has no host-full eviction): a bug in the caller. */
export function noRow(scheme: string, s: PageState, event: DeviceEvent): never {
  throw new Error(`${scheme}: no row for ${event} (state ${fmt(s)})`);
}
