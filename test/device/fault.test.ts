/**
 * The pure parts of the device layer: PTE bits, fault-buffer parsing, coalescing and batching,
 * frame runs for batched copies, launch plans (thread counts, validation).
 */
import { describe, expect, it } from 'vitest';
import {
  coalesceFaults,
  dispatchThreads,
  faultBatches,
  faultLayout,
  formatPages,
  frameRuns,
  MIN_THREADS,
  parseFaultEntries,
  planKernel,
  pteDecode,
  pteEncode,
} from '../../src/device/index.ts';
import { HmmlabError } from '../../src/errors.ts';

describe('device PTE', () => {
  it('encodes frame and permission and decodes them back', () => {
    expect(pteDecode(pteEncode(12345, 'rw'))).toMatchObject({ frame: 12345, perm: 'rw', dirty: false });
    expect(pteDecode(pteEncode(7, 'ro'))).toMatchObject({ frame: 7, perm: 'ro' });
    expect(pteDecode(pteEncode(7, 'none'))).toMatchObject({ frame: null, perm: 'none' });
    expect(pteDecode((pteEncode(3, 'rw') | 0x2000_0000) >>> 0).dirty).toBe(true);
  });
});

describe('fault buffer', () => {
  it('parses entries with their raw counts', () => {
    const entries = Uint32Array.from([5, 10, (6 | 0x8000_0000) >>> 0, 11]);
    const faults = parseFaultEntries(entries, 2, (i, w) => (i === 5 && !w ? 100 : i === 6 && w ? 7 : 0));
    expect(faults).toEqual([
      { index: 5, write: false, thread: 10, raw: 100 },
      { index: 6, write: true, thread: 11, raw: 7 },
    ]);
  });

  it('coalesces a read and a write fault on one page into one write fault, in page order', () => {
    const out = coalesceFaults([
      { index: 9, write: false, thread: 1, raw: 3 },
      { index: 2, write: false, thread: 2, raw: 1 },
      { index: 9, write: true, thread: 4, raw: 5 },
    ]);
    expect(out).toEqual([
      { index: 2, write: false, thread: 2, raw: 1 },
      { index: 9, write: true, thread: 4, raw: 8 },
    ]);
  });

  it('cuts 600 faults into batches of 256, 256 and 88', () => {
    const b = faultBatches(
      Array.from({ length: 600 }, (_, i) => i),
      256,
    );
    expect(b.map((x) => x.length)).toEqual([256, 256, 88]);
  });

  it('sizes the buffer so every (page, access) has an entry', () => {
    const l = faultLayout(64);
    expect(l.cap).toBe(128);
    expect(l.words).toBe(4 + 2 * 128 + 128);
  });

  it('formats page lists as ranges', () => {
    expect(formatPages([3, 1, 2, 7, 9, 10])).toBe('1-3, 7, 9-10');
  });
});

describe('frame runs', () => {
  it('joins consecutive frames within a buffer and splits at buffer ends', () => {
    // 3 frames a buffer: 1,2 | 3,4,5 | 7
    const runs = frameRuns([1, 2, 3, 4, 5, 7], 3, 4096);
    expect(runs.map((r) => [r.bufferIndex, r.offset, r.first, r.count])).toEqual([
      [0, 4096, 0, 2],
      [1, 0, 2, 3],
      [2, 4096, 5, 1],
    ]);
  });
});

describe('kernel plans', () => {
  it('gives big kernels at least 16,384 threads and strides past 65,536', () => {
    expect(planKernel('devwrite', { off: 0, len: 4 * 20000, tag: 1 }, 4096).threads).toBeGreaterThanOrEqual(
      MIN_THREADS,
    );
    expect(dispatchThreads(10_000_000)).toBe(65_536);
    expect(planKernel('atomic', { off: 0, len: 16 }, 4096).threads).toBe(MIN_THREADS);
  });

  it('covers the pages of a range that is not page aligned', () => {
    const p = planKernel('devread', { off: 4092, len: 8 }, 4096);
    expect([p.firstPage, p.lastPage, p.items]).toEqual([0, 1, 2]);
  });

  it('rejects offsets and lengths that are not word multiples, naming them', () => {
    expect(() => planKernel('devwrite', { off: 2, len: 4 }, 4096)).toThrow(/offset 2/);
    expect(() => planKernel('devread', { off: 0, len: 6 }, 4096)).toThrow(HmmlabError);
    expect(() => planKernel('devread', { off: 2 ** 32, len: 4 }, 4096)).toThrow(/4 GiB/);
  });
});
