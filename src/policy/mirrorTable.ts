/**
 * Jan Kara's mirror scheme as one table: every event a page can meet, the states it may meet it in,
 * the state it leaves, and the work in between, in the order it must be done. The mirror policy
 * (mirror.ts, over the core in core.ts) reads a page's state, asks `mirrorTransition` what to do,
 * and does it; test/policy/schemeTables.test.ts walks the table and test/policy/schemeRows.test.ts
 * drives every path on a real mount and checks that it does what its row says.
 *
 * The vocabulary (states, events, work, WORK_ORDER) is scheme.ts's; it is re-exported here.
 */
import {
  type CpuPerm,
  DEVICE_EVENTS,
  type DeviceEvent,
  fmt,
  isLegalIn,
  type LegalRows,
  minCpu,
  noRow,
  type PageState,
  type SchemeTable,
  st,
  statesOf,
  type Transition,
  type Work,
} from './scheme.ts';

export {
  type CpuPerm,
  type DevicePerm,
  fmt,
  type HostState,
  type PageState,
  type Transition,
  WORK_ORDER,
  type Work,
} from './scheme.ts';

/** The events of the mirror table (every event but the host-full eviction, which mirror does not need). */
export type MirrorEvent = Exclude<DeviceEvent, 'device-evict-host-full'>;

export const MIRROR_EVENTS = DEVICE_EVENTS.filter((e): e is MirrorEvent => e !== 'device-evict-host-full');

const LEGAL: LegalRows = [
  [['-', 'C', 'D'], '-', ['-', 'ro', 'rw']],
  [['C', 'D'], 'ro', ['-', 'ro']],
  [['S', 'E'], 'rw', ['-']],
  [['E'], 'ro', ['-']],
];

/** docs/DESIGN.md's legal states of the mirror scheme. Invariant 1 (single writer) is part of it. */
export function isLegal(s: PageState): boolean {
  return isLegalIn(LEGAL, s);
}

export function allLegalStates(): PageState[] {
  return statesOf(LEGAL);
}

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
export function mirrorTransition(s: PageState, event: DeviceEvent): Transition {
  if (!isLegal(s)) throw new Error(`mirror: illegal page state ${fmt(s)} before ${event}`);
  switch (event) {
    case 'device-read-fault': {
      if (s.dev !== '-') return { next: s, work: [] }; // spurious: already readable (raced with another fault)
      const work: Work[] = s.host === '-' ? ['readpage'] : [];
      if (s.cpu === 'rw') work.push('page_mkclean');
      work.push('copy-to-device');
      return { next: st(s.host === '-' ? 'C' : s.host, 'ro', minCpu(s.cpu, 'ro')), work };
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
      // write(2) of a whole absent page reads nothing: grab_cache_page_write_begin gives a new A.
      // (A partial one reads it first: that is the cpu-read row.) A fault reads it in.
      const t =
        s.host === '-' && event === 'cpu-write'
          ? { next: st('C', '-', s.cpu), work: ['alloc-page'] as Work[] }
          : pullFromDevice(s);
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
      // folio_clear_dirty_for_io: page_mkclean write-protects the CPU mappings before the write.
      if (s.host === 'D')
        return { next: st('C', s.dev, minCpu(s.cpu, 'ro')), work: ['page_mkclean', 'writepage'] };
      return { next: s, work: [] };
    }
    case 'invalidate': {
      // The caller wrote the range back first; what is left is clean.
      const work: Work[] = [];
      if (s.cpu !== '-') work.push('try_to_unmap');
      if (s.dev !== '-') work.push('device-revoke');
      if (s.host !== '-' && s.host !== 'E') work.push('drop-page');
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
      // The writeback pass first (page_mkclean of a dirty page's writable PTEs, then writepage),
      // then the mappings are torn down and every page and copy leaves.
      const work: Work[] = s.host === 'D' && s.cpu === 'rw' ? ['page_mkclean'] : [];
      if (s.cpu !== '-') work.push('try_to_unmap');
      if (s.host === 'S') work.push('device-protect', 'copy-back', 'writepage');
      else if (s.host === 'E' && s.dev === 'rw') work.push('device-protect', 'bounce-writeback');
      else if (s.host === 'D') work.push('writepage');
      if (s.dev !== '-') work.push('device-revoke');
      if (s.host !== '-' && s.host !== 'E') work.push('drop-page');
      return { next: st('-', '-', '-'), work };
    }
    default:
      return noRow('mirror', s, event);
  }
}

/** The mirror scheme as the core and the invariant checker read it. */
export const MIRROR_TABLE: SchemeTable = {
  name: 'mirror',
  events: MIRROR_EVENTS,
  isLegal,
  allLegalStates,
  transition: mirrorTransition,
  dirtyReadOnlyEntries: false,
};
