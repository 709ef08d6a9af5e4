/**
 * Jan Kara's mirror scheme as one table: every event a page can meet, the states it may meet it in,
 * the state it leaves, and the work in between, in the order it must be done. The mirror policy
 * (mirror.ts) reads a page's state, asks `mirrorTransition` what to do, and does it; tests walk the
 * whole table and check that every legal state stays legal.
 *
 * Host page A: '-' absent, 'C' uptodate clean, 'D' uptodate dirty, 'S' stale (not uptodate, dirty:
 * the device holds newer data), 'E' device entry (A reclaimed, data on the device).
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

export type MirrorEvent =
  | 'device-read-fault'
  | 'device-write-fault'
  | 'cpu-read' // read(2), readahead, splice: the data, no mapping
  | 'cpu-read-fault' // mmap read fault, fault-around: the data and a read-only PTE
  | 'cpu-write' // write(2): the CPU modifies A
  | 'cpu-write-fault' // mmap write fault: a writable PTE
  | 'writeback' // writeback, fsync, direct-I/O read's flush
  | 'invalidate' // direct-I/O write, truncate, punch (after writeback)
  | 'host-reclaim'
  | 'device-evict'
  | 'unmount'; // and device detach

/** The work, named for the kernel function that would do it. */
export type Work =
  | 'readpage' // fill A from disk
  | 'alloc-page' // a fresh A to receive the device's data (A was E)
  | 'page_mkclean' // write-protect every CPU mapping of A
  | 'try_to_unmap' // clear every CPU mapping of A
  | 'page_mkwrite' // the filesystem's permission to write (may refuse: ENOSPC, EROFS)
  | 'copy-to-device' // A -> A'
  | 'device-protect' // write-protect A' (device TLB shootdown)
  | 'copy-back' // A' -> A (only if the device dirtied A')
  | 'bounce-writeback' // A' -> bounce page -> disk (A is E)
  | 'writepage' // A -> disk
  | 'device-revoke' // remove A' from the device page table (shootdown) and free its frame
  | 'device-entry' // replace A by a device entry in the xarray
  | 'drop-page'; // remove A from the page cache

/**
 * One order for all work: every row of the table lists its work in this order, so a policy may do
 * a whole batch of pages phase by phase (every page's page_mkclean, then one batched copy, ...)
 * and still do each page's work in the order its row asks. The table's test checks it.
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

const LEGAL: ReadonlyArray<[HostState[], DevicePerm, CpuPerm[]]> = [
  [['-', 'C', 'D'], '-', ['-', 'ro', 'rw']],
  [['C', 'D'], 'ro', ['-', 'ro']],
  [['S', 'E'], 'rw', ['-']],
  [['E'], 'ro', ['-']],
];

/** docs/DESIGN.md's legal states. Invariant 1 (single writer) is part of it. */
export function isLegal(s: PageState): boolean {
  return LEGAL.some(([hosts, dev, cpus]) => hosts.includes(s.host) && dev === s.dev && cpus.includes(s.cpu));
}

export function allLegalStates(): PageState[] {
  const out: PageState[] = [];
  for (const [hosts, dev, cpus] of LEGAL)
    for (const host of hosts) for (const cpu of cpus) out.push({ host, dev, cpu });
  return out;
}

const min = (a: CpuPerm, b: CpuPerm): CpuPerm =>
  a === '-' || b === '-' ? '-' : a === 'ro' || b === 'ro' ? 'ro' : 'rw';
const st = (host: HostState, dev: DevicePerm, cpu: CpuPerm): PageState => ({ host, dev, cpu });

/** Bring the device's data back to A so the CPU can use it: S/E -> uptodate, A' read-only. */
function pullFromDevice(s: PageState): Transition {
  if (s.host === 'S') return { next: st('D', 'ro', s.cpu), work: ['device-protect', 'copy-back'] };
  if (s.host === 'E' && s.dev === 'rw')
    return { next: st('D', 'ro', '-'), work: ['alloc-page', 'device-protect', 'copy-back'] };
  if (s.host === 'E') return { next: st('C', 'ro', '-'), work: ['alloc-page', 'copy-back'] };
  if (s.host === '-') return { next: st('C', s.dev, s.cpu), work: ['readpage'] };
  return { next: s, work: [] };
}

/**
 * What `event` does to a page in state `s`. Throws on an illegal state: a bug in the caller, not
 * a user error.
 */
export function mirrorTransition(s: PageState, event: MirrorEvent): Transition {
  if (!isLegal(s)) throw new Error(`mirror: illegal page state ${fmt(s)} before ${event}`);
  switch (event) {
    case 'device-read-fault': {
      if (s.dev !== '-') return { next: s, work: [] }; // spurious: already readable (raced with another fault)
      const work: Work[] = s.host === '-' ? ['readpage'] : [];
      if (s.cpu === 'rw') work.push('page_mkclean');
      work.push('copy-to-device');
      return { next: st(s.host === '-' ? 'C' : s.host, 'ro', min(s.cpu, 'ro')), work };
    }
    case 'device-write-fault': {
      if (s.dev === 'rw') return { next: s, work: [] };
      if (s.host === 'E') return { next: st('E', 'rw', '-'), work: ['page_mkwrite'] };
      const work: Work[] = s.host === '-' ? ['readpage'] : [];
      work.push('page_mkwrite');
      if (s.cpu !== '-') work.push('try_to_unmap');
      if (s.dev === '-') work.push('copy-to-device');
      return { next: st('S', 'rw', '-'), work };
    }
    case 'cpu-read':
      return pullFromDevice(s);
    case 'cpu-read-fault': {
      const t = pullFromDevice(s);
      return { next: { ...t.next, cpu: t.next.cpu === '-' ? 'ro' : t.next.cpu }, work: t.work };
    }
    case 'cpu-write':
    case 'cpu-write-fault': {
      const t = pullFromDevice(s);
      const work = [...t.work];
      if (t.next.dev !== '-') work.push('device-revoke');
      const cpu: CpuPerm = event === 'cpu-write-fault' ? 'rw' : t.next.cpu;
      return { next: st('D', '-', cpu), work };
    }
    case 'writeback': {
      if (s.host === 'S')
        return { next: st('C', 'ro', '-'), work: ['device-protect', 'copy-back', 'writepage'] };
      if (s.host === 'E' && s.dev === 'rw')
        return { next: st('E', 'ro', '-'), work: ['device-protect', 'bounce-writeback'] };
      if (s.host === 'D') return { next: st('C', s.dev, s.cpu), work: ['page_mkclean', 'writepage'] };
      return { next: s, work: [] };
    }
    case 'invalidate': {
      // The caller wrote the range back first; what is left is clean.
      const work: Work[] = [];
      if (s.cpu !== '-') work.push('try_to_unmap');
      if (s.dev !== '-') work.push('device-revoke');
      if (s.host !== '-') work.push('drop-page');
      return { next: st('-', '-', '-'), work };
    }
    case 'host-reclaim': {
      if (s.host === '-' || s.host === 'E') return { next: s, work: [] };
      const work: Work[] = [];
      if (s.cpu !== '-') work.push('try_to_unmap');
      // Unmapped first, so no CPU PTE is left to clean: writepage is all a dirty page needs.
      if (s.host === 'D') work.push('writepage');
      if (s.dev === '-') return { next: st('-', '-', '-'), work: [...work, 'drop-page'] };
      return { next: st('E', s.dev, '-'), work: [...work, 'device-entry'] };
    }
    case 'device-evict': {
      if (s.dev === '-') return { next: s, work: [] };
      if (s.host === 'S')
        return { next: st('D', '-', '-'), work: ['device-protect', 'copy-back', 'device-revoke'] };
      if (s.host === 'E' && s.dev === 'rw')
        return { next: st('-', '-', '-'), work: ['device-protect', 'bounce-writeback', 'device-revoke'] };
      return { next: st(s.host === 'E' ? '-' : s.host, '-', s.cpu), work: ['device-revoke'] };
    }
    case 'unmount': {
      const work: Work[] = [];
      if (s.cpu !== '-') work.push('try_to_unmap');
      if (s.host === 'S') work.push('device-protect', 'copy-back', 'writepage');
      else if (s.host === 'E' && s.dev === 'rw') work.push('device-protect', 'bounce-writeback');
      else if (s.host === 'D') work.push('writepage');
      if (s.dev !== '-') work.push('device-revoke');
      if (s.host !== '-' && s.host !== 'E') work.push('drop-page');
      return { next: st('-', '-', '-'), work };
    }
  }
}

export function fmt(s: PageState): string {
  return `(A ${s.host}, A' ${s.dev}, CPU ${s.cpu})`;
}
