/**
 * Jérôme Glisse's migrate scheme as one table. The page moves: a device fault copies A to A' and
 * frees A at once, a device entry E standing in the page-cache index; read(2) and write(2) of a
 * device-held page go through a bounce page and leave it on the device; an mmap fault migrates it
 * back (dev_pagemap_ops.migrate_to_ram: A allocated and filled from A', A' freed); writeback writes
 * A' to disk through a bounce page. A page is either on the host with no device copy, or an entry
 * whose only copy is A' (read-only or writable).
 *
 * What the table cannot see: whether A' holds data the disk lacks (a dirty page moved, a write(2)
 * bounced into it, or the device wrote it). The policy keeps that in its record: a copy-back makes
 * A dirty then, writeback bounces only such entries, and a lost device names them.
 */
import {
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

/** Migrate meets every event (eviction has a row for a host with no free page too). */
export const MIGRATE_EVENTS: readonly DeviceEvent[] = DEVICE_EVENTS;

const LEGAL: LegalRows = [
  [['-', 'C', 'D'], '-', ['-', 'ro', 'rw']],
  [['E'], 'ro', ['-']],
  [['E'], 'rw', ['-']],
];

export function isMigrateLegal(s: PageState): boolean {
  return isLegalIn(LEGAL, s);
}

/** migrate_vma_setup + the copy + migrate_vma_pages/finalize, to the device: A' takes A's place. */
function migrateToDevice(s: PageState, write: boolean): Transition {
  const work: Work[] = s.host === '-' ? ['readpage'] : [];
  if (write) work.push('page_mkwrite');
  if (s.cpu !== '-') work.push('try_to_unmap');
  work.push('copy-to-device', 'device-entry');
  return { next: st('E', write ? 'rw' : 'ro', '-'), work };
}

/** migrate_to_ram: a new A filled from A', A' freed. Dirty when A' held data the disk lacks. */
function migrateToRam(s: PageState): Transition {
  return {
    next: st(s.dev === 'rw' ? 'D' : 'C', '-', '-'),
    work: ['alloc-page', 'copy-back', 'device-revoke'],
  };
}

export function migrateTransition(s: PageState, event: DeviceEvent): Transition {
  if (!isMigrateLegal(s)) throw new Error(`migrate: illegal page state ${fmt(s)} before ${event}`);
  const onDevice = s.host === 'E';
  switch (event) {
    case 'device-read-fault':
      if (onDevice) return { next: s, work: [] }; // spurious: already mapped
      return migrateToDevice(s, false);
    case 'device-write-fault':
      if (s.dev === 'rw') return { next: s, work: [] };
      if (onDevice) return { next: st('E', 'rw', '-'), work: ['page_mkwrite'] }; // upgrade, no copy
      return migrateToDevice(s, true);
    case 'cpu-read':
      if (onDevice) return { next: s, work: ['bounce-read'] };
      if (s.host === '-') return { next: st('C', '-', s.cpu), work: ['readpage'] };
      return { next: s, work: [] };
    case 'cpu-read-fault': {
      if (onDevice) {
        const t = migrateToRam(s);
        return { next: { ...t.next, cpu: 'ro' }, work: t.work };
      }
      const work: Work[] = s.host === '-' ? ['readpage'] : [];
      return { next: st(s.host === '-' ? 'C' : s.host, '-', s.cpu === '-' ? 'ro' : s.cpu), work };
    }
    case 'cpu-write':
      // Single writer: a device that may write A' meanwhile would lose its stores to the bounce's
      // read-modify-write, or the bounce its bytes to them: A' is write-protected first.
      if (s.dev === 'rw') return { next: st('E', 'ro', '-'), work: ['device-protect', 'bounce-write'] };
      if (onDevice) return { next: s, work: ['bounce-write'] };
      return { next: st('D', '-', s.cpu), work: s.host === '-' ? ['alloc-page'] : [] };
    case 'cpu-write-fault': {
      if (onDevice) return { next: st('D', '-', 'rw'), work: migrateToRam(s).work };
      return { next: st('D', '-', 'rw'), work: s.host === '-' ? ['readpage'] : [] };
    }
    case 'writeback':
      if (s.dev === 'rw') return { next: st('E', 'ro', '-'), work: ['device-protect', 'bounce-writeback'] };
      if (onDevice) return { next: s, work: ['bounce-writeback'] }; // only if A' is newer than the disk
      // folio_clear_dirty_for_io: page_mkclean write-protects the CPU mappings before the write.
      if (s.host === 'D')
        return { next: st('C', '-', minCpu(s.cpu, 'ro')), work: ['page_mkclean', 'writepage'] };
      return { next: s, work: [] };
    case 'invalidate': {
      const work: Work[] = [];
      if (s.cpu !== '-') work.push('try_to_unmap');
      work.push(onDevice ? 'device-revoke' : 'drop-page');
      return { next: st('-', '-', '-'), work: s.host === '-' ? [] : work };
    }
    case 'host-reclaim': {
      if (s.host === '-' || onDevice) return { next: s, work: [] };
      const work: Work[] = [];
      if (s.cpu !== '-') work.push('try_to_unmap');
      if (s.host === 'D') work.push('writepage');
      return { next: st('-', '-', '-'), work: [...work, 'drop-page'] };
    }
    case 'device-evict':
      return onDevice ? migrateToRam(s) : { next: s, work: [] };
    case 'device-evict-host-full':
      // No host page to migrate to: what the disk lacks goes there through a bounce page.
      return onDevice
        ? { next: st('-', '-', '-'), work: ['bounce-writeback', 'device-revoke'] }
        : { next: s, work: [] };
    case 'unmount': {
      // The writeback pass first, then the mappings are torn down and every page and copy leaves.
      const work: Work[] = s.host === 'D' && s.cpu === 'rw' ? ['page_mkclean'] : [];
      if (s.cpu !== '-') work.push('try_to_unmap');
      if (s.dev === 'rw') work.push('device-protect');
      if (onDevice) work.push('bounce-writeback', 'device-revoke');
      else if (s.host === 'D') work.push('writepage', 'drop-page');
      else if (s.host === 'C') work.push('drop-page');
      return { next: st('-', '-', '-'), work };
    }
    default:
      return noRow('migrate', s, event);
  }
}

/** The migrate scheme as the core and the invariant checker read it. */
export const MIGRATE_TABLE: SchemeTable = {
  name: 'migrate',
  events: MIGRATE_EVENTS,
  isLegal: isMigrateLegal,
  allLegalStates: () => statesOf(LEGAL),
  transition: migrateTransition,
  dirtyReadOnlyEntries: true,
};
