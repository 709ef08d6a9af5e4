/**
 * The two schemes' tables (src/policy/mirrorTable.ts, src/policy/migrateTable.ts) walked whole, as
 * tables: every legal state meets every event of its scheme and must leave a legal state without
 * losing data, with its work in WORK_ORDER; and the rows the 2016 thread describes say what Kara's
 * and Glisse's messages say. That the paths do what the rows say is schemeRows.test.ts, on a mount.
 */
import { describe, expect, it } from 'vitest';
import { MIGRATE_TABLE, migrateTransition } from '../../src/policy/migrateTable.ts';
import {
  allLegalStates,
  fmt,
  isLegal,
  MIRROR_TABLE,
  mirrorTransition,
  type PageState,
  WORK_ORDER,
} from '../../src/policy/mirrorTable.ts';
import type { SchemeTable } from '../../src/policy/scheme.ts';

/** Whether the newest data may be only on the device (so leaving it needs a copy). */
const NEWEST_ON_DEVICE: Record<string, (s: PageState) => boolean> = {
  mirror: (s) => s.host === 'S' || (s.host === 'E' && s.dev === 'rw'),
  migrate: (s) => s.host === 'E', // a read-only entry may be newer than the disk too (a bounced write)
};

describe.each([MIRROR_TABLE, MIGRATE_TABLE])('the $name table, walked whole', (table: SchemeTable) => {
  const newest = NEWEST_ON_DEVICE[table.name];
  for (const s of table.allLegalStates()) {
    for (const ev of table.events) {
      it(`${ev} from ${fmt(s)} leaves a legal state without losing data`, () => {
        const t = table.transition(s, ev);
        expect(table.isLegal(t.next), `${fmt(s)} --${ev}--> ${fmt(t.next)}`).toBe(true);
        // No lost data: device-held newest data is copied back or kept on the device (or on disk).
        if (newest(s) && !newest(t.next) && ev !== 'invalidate') {
          expect(t.work.some((w) => w === 'copy-back' || w === 'bounce-writeback')).toBe(true);
        }
        // A dirty host page never leaves the cache without writepage (or the data going to A').
        if (s.host === 'D' && (t.next.host === '-' || t.next.host === 'E') && ev !== 'invalidate') {
          expect(t.work.some((w) => w === 'writepage' || w === 'copy-to-device')).toBe(true);
        }
        // After a CPU write fault, the device has no access (single writer).
        if (ev === 'cpu-write-fault') expect(t.next.dev).toBe('-');
        // After writeback or unmount nothing writable stays on the device.
        if (ev === 'writeback' || ev === 'unmount') expect(t.next.dev).not.toBe('rw');
        // Every row lists its work in WORK_ORDER, so a batch can be worked phase by phase.
        const pos = t.work.map((w) => WORK_ORDER.indexOf(w));
        expect(pos.every((p) => p >= 0)).toBe(true);
        expect(
          pos.every((p, i) => i === 0 || p > pos[i - 1]),
          `${fmt(s)} --${ev}: ${t.work}`,
        ).toBe(true);
      });
    }
  }

  it('rejects an illegal state as a bug', () => {
    expect(() => table.transition({ host: 'S', dev: '-', cpu: '-' }, 'cpu-read')).toThrow(
      /illegal page state/,
    );
  });
});

describe("the mirror table: Kara's message, row by row", () => {
  it('lists the legal states of docs/DESIGN.md and nothing else', () => {
    const states = allLegalStates();
    expect(states.length).toBe(9 + 4 + 2 + 1);
    expect(isLegal({ host: 'S', dev: 'rw', cpu: 'ro' })).toBe(false); // single writer
    expect(isLegal({ host: 'C', dev: 'ro', cpu: 'rw' })).toBe(false);
    expect(isLegal({ host: 'C', dev: 'rw', cpu: '-' })).toBe(false); // A uptodate while A' writable
  });

  it("device read fault: write-protect the CPU mappings of A, copy A to A', map A' read-only", () => {
    const t = mirrorTransition({ host: 'D', dev: '-', cpu: 'rw' }, 'device-read-fault');
    expect(t.work).toEqual(['page_mkclean', 'copy-to-device']);
    expect(t.next).toEqual({ host: 'D', dev: 'ro', cpu: 'ro' });
  });

  it('device write fault: page_mkwrite, clear every CPU mapping, A not uptodate and dirty', () => {
    const t = mirrorTransition({ host: 'C', dev: 'ro', cpu: 'ro' }, 'device-write-fault');
    expect(t.work).toEqual(['page_mkwrite', 'try_to_unmap']);
    expect(t.next).toEqual({ host: 'S', dev: 'rw', cpu: '-' });
  });

  it("CPU needs the data: write-protect A' and copy back, A uptodate and dirty", () => {
    const t = mirrorTransition({ host: 'S', dev: 'rw', cpu: '-' }, 'cpu-read');
    expect(t.work).toEqual(['device-protect', 'copy-back']);
    expect(t.next).toEqual({ host: 'D', dev: 'ro', cpu: '-' });
  });

  it("CPU write revokes A' (copying back first what the device wrote)", () => {
    expect(mirrorTransition({ host: 'C', dev: 'ro', cpu: 'ro' }, 'cpu-write-fault').work).toEqual([
      'device-revoke',
    ]);
    expect(mirrorTransition({ host: 'S', dev: 'rw', cpu: '-' }, 'cpu-write').work).toEqual([
      'device-protect',
      'copy-back',
      'device-revoke',
    ]);
  });

  it("reclaim may drop A while A' holds the data, leaving a device entry", () => {
    const t = mirrorTransition({ host: 'S', dev: 'rw', cpu: '-' }, 'host-reclaim');
    expect(t.next).toEqual({ host: 'E', dev: 'rw', cpu: '-' });
    expect(t.work).toEqual(['device-entry']);
    // and readpage then pulls from the device, not the disk
    expect(mirrorTransition(t.next, 'cpu-read').work).toEqual(['alloc-page', 'device-protect', 'copy-back']);
  });
});

describe("the migrate table: Glisse's scheme, row by row", () => {
  it('lists the legal states: the page on the host with no device copy, or a device entry', () => {
    const states = MIGRATE_TABLE.allLegalStates();
    expect(states.length).toBe(9 + 2);
    expect(MIGRATE_TABLE.isLegal({ host: 'C', dev: 'ro', cpu: '-' })).toBe(false); // no copy beside A
    expect(MIGRATE_TABLE.isLegal({ host: 'S', dev: 'rw', cpu: '-' })).toBe(false);
  });

  it("a device fault (read or write) copies A to A' and frees A at once: a device entry stands", () => {
    expect(migrateTransition({ host: 'C', dev: '-', cpu: 'ro' }, 'device-read-fault')).toEqual({
      next: { host: 'E', dev: 'ro', cpu: '-' },
      work: ['try_to_unmap', 'copy-to-device', 'device-entry'],
    });
    // a write fault calls page_mkwrite first
    expect(migrateTransition({ host: '-', dev: '-', cpu: '-' }, 'device-write-fault').work).toEqual([
      'readpage',
      'page_mkwrite',
      'copy-to-device',
      'device-entry',
    ]);
  });

  it('read(2) and write(2) of a device-held page bounce; the page stays', () => {
    const e = { host: 'E', dev: 'rw', cpu: '-' } as const;
    const ro = { host: 'E', dev: 'ro', cpu: '-' } as const;
    expect(migrateTransition(e, 'cpu-read')).toEqual({ next: e, work: ['bounce-read'] });
    // single writer: a device that may write A' is write-protected before the bounce writes it
    expect(migrateTransition(e, 'cpu-write')).toEqual({ next: ro, work: ['device-protect', 'bounce-write'] });
    expect(migrateTransition(ro, 'cpu-write')).toEqual({ next: ro, work: ['bounce-write'] });
  });

  it("an mmap fault migrates the page back (migrate_to_ram): A allocated and filled, A' freed", () => {
    expect(migrateTransition({ host: 'E', dev: 'rw', cpu: '-' }, 'cpu-read-fault')).toEqual({
      next: { host: 'D', dev: '-', cpu: 'ro' },
      work: ['alloc-page', 'copy-back', 'device-revoke'],
    });
  });

  it("writeback bounces A' to disk; eviction migrates home, or to disk when the host is full", () => {
    expect(migrateTransition({ host: 'E', dev: 'rw', cpu: '-' }, 'writeback').work).toEqual([
      'device-protect',
      'bounce-writeback',
    ]);
    expect(migrateTransition({ host: 'E', dev: 'ro', cpu: '-' }, 'device-evict').next.host).toBe('C');
    expect(migrateTransition({ host: 'E', dev: 'rw', cpu: '-' }, 'device-evict-host-full')).toEqual({
      next: { host: '-', dev: '-', cpu: '-' },
      work: ['bounce-writeback', 'device-revoke'],
    });
  });

  it('host reclaim has nothing of the device to keep: a page is freed, or it is already gone', () => {
    for (const s of MIGRATE_TABLE.allLegalStates())
      expect(migrateTransition(s, 'host-reclaim').work).not.toContain('device-entry');
  });
});
