/**
 * The mirror scheme's state table (src/policy/mirrorTable.ts), walked whole: every legal state
 * meets every event and must leave a legal state, with the work Kara's message asks for.
 */
import { describe, expect, it } from 'vitest';
import {
  allLegalStates,
  fmt,
  isLegal,
  type MirrorEvent,
  mirrorTransition,
  type PageState,
  WORK_ORDER,
} from '../../src/policy/mirrorTable.ts';

const EVENTS: MirrorEvent[] = [
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
  'unmount',
];

const holdsNewestOnDevice = (s: PageState) => s.host === 'S' || (s.host === 'E' && s.dev === 'rw');

describe('mirror state table', () => {
  it('lists the legal states of docs/DESIGN.md and nothing else', () => {
    const states = allLegalStates();
    expect(states.length).toBe(9 + 4 + 2 + 1);
    expect(isLegal({ host: 'S', dev: 'rw', cpu: 'ro' })).toBe(false); // single writer
    expect(isLegal({ host: 'C', dev: 'ro', cpu: 'rw' })).toBe(false);
    expect(isLegal({ host: 'C', dev: 'rw', cpu: '-' })).toBe(false); // A uptodate while A' writable
  });

  for (const s of allLegalStates()) {
    for (const ev of EVENTS) {
      it(`${ev} from ${fmt(s)} leaves a legal state without losing data`, () => {
        const t = mirrorTransition(s, ev);
        expect(isLegal(t.next), `${fmt(s)} --${ev}--> ${fmt(t.next)}`).toBe(true);
        // No lost data: device-held newest data is copied back or kept on the device (or on disk).
        if (holdsNewestOnDevice(s) && !holdsNewestOnDevice(t.next) && ev !== 'invalidate') {
          expect(t.work.some((w) => w === 'copy-back' || w === 'bounce-writeback')).toBe(true);
        }
        // A dirty host page never leaves the cache without writepage (or a device entry keeping A').
        if (s.host === 'D' && (t.next.host === '-' || t.next.host === 'E') && ev !== 'invalidate') {
          expect(t.work).toContain('writepage');
        }
        // After a CPU write, the device has no access (single writer).
        if (ev === 'cpu-write' || ev === 'cpu-write-fault') expect(t.next.dev).toBe('-');
        // After writeback or unmount nothing newer than the disk stays on the device.
        if (ev === 'writeback' || ev === 'unmount') expect(holdsNewestOnDevice(t.next)).toBe(false);
      });
    }
  }

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

  it('every row lists its work in WORK_ORDER, so a batch can be worked phase by phase', () => {
    for (const s of allLegalStates()) {
      for (const ev of EVENTS) {
        const pos = mirrorTransition(s, ev).work.map((w) => WORK_ORDER.indexOf(w));
        expect(
          pos.every((p) => p >= 0),
          `${fmt(s)} --${ev}`,
        ).toBe(true);
        expect(
          pos.every((p, i) => i === 0 || p > pos[i - 1]),
          `${fmt(s)} --${ev}: ${mirrorTransition(s, ev).work}`,
        ).toBe(true);
      }
    }
  });

  it('rejects an illegal state as a bug', () => {
    expect(() => mirrorTransition({ host: 'S', dev: '-', cpu: '-' }, 'cpu-read')).toThrow(
      /illegal page state/,
    );
  });
});
