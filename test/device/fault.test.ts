/**
 * The pure parts of the device layer: PTE bits, fault-buffer parsing, coalescing and batching,
 * frame runs for batched copies, launch plans (thread counts, validation, chunks).
 */
import { describe, expect, it } from 'vitest';
import {
  coalesceFaults,
  DEFAULT_CHUNK_BYTES,
  dispatchThreads,
  faultBatches,
  faultLayout,
  formatPages,
  frameRuns,
  MIN_THREADS,
  parseFaultEntries,
  patternByte,
  planChunks,
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
    const first = (kind: 'devwrite' | 'atomic', len: number) =>
      [...planChunks(planKernel(kind, { off: 0, len, tag: 1 }, 4096), DEFAULT_CHUNK_BYTES)][0];
    expect(first('devwrite', 4 * 20000).threads).toBeGreaterThanOrEqual(MIN_THREADS);
    expect(dispatchThreads(10_000_000)).toBe(65_536);
    expect(first('atomic', 16).threads).toBe(MIN_THREADS);
  });

  it('covers the pages of a range that is not page aligned', () => {
    const p = planKernel('devread', { off: 4092, len: 8 }, 4096);
    expect([p.firstPage, p.lastPage, p.items]).toEqual([0, 1, 2]);
  });

  it('rejects offsets and lengths that are not word multiples, naming them', () => {
    expect(() => planKernel('devwrite', { off: 2, len: 4 }, 4096)).toThrow(/offset 2/);
    expect(() => planKernel('devread', { off: 0, len: 6 }, 4096)).toThrow(HmmlabError);
    expect(() => planKernel('devread', { off: 2 ** 31 * 4096, len: 4 }, 4096)).toThrow(/address limit/);
    expect(() => planKernel('atomic', { off: 0, len: 2 ** 32 + 4 }, 4096)).toThrow(/4 GiB/);
  });

  it('addresses files past 4 GiB: a chunk counts its words from its own first page', () => {
    const off = 5 * 2 ** 30 + 12; // 5 GiB + 12
    const plan = planKernel('devwrite', { off, len: 8192, tag: 3 }, 4096);
    const chunks = [...planChunks(plan, 4096)];
    const p0 = Math.floor(off / 4096);
    expect(chunks.map((c) => [c.firstPage, c.firstWord, c.itemBase, c.items])).toEqual([
      [p0, 3, 0, 1021],
      [p0 + 1, 0, 1021, 1024],
      [p0 + 2, 0, 2045, 3],
    ]);
    // pattern_base is item 0's byte of the pattern, exact however far the file offset is.
    for (const c of chunks) expect(c.patternBase).toBe(patternByte(off + c.itemBase * 4, 3));
  });

  it('cuts word kernels into whole pages and atomic threads into slices', () => {
    const plan = planKernel('devread', { off: 4092, len: 5 * 4096 }, 4096);
    const chunks = [...planChunks(plan, 2 * 4096)];
    expect(chunks.map((c) => [c.firstPage, c.lastPage, c.items, c.outWords, c.slots])).toEqual([
      [0, 1, 1 + 1024, 1025, 2],
      [2, 3, 2048, 2048, 2],
      [4, 5, 1024 + 1023, 2047, 2],
    ]);
    expect(chunks.reduce((s, c) => s + c.items, 0)).toBe(plan.items);
    const atomic = planKernel('atomic', { off: 0, len: 64 * 4096, threads: 1000, k: 8 }, 4096);
    const slices = [...planChunks(atomic, 400 * 4)];
    expect(slices.map((c) => [c.itemBase, c.items, c.slots])).toEqual([
      [0, 400, 400],
      [400, 400, 400],
      [800, 200, 200],
    ]);
    // Thread i starts at word i * 65 (spread) and does 8 increments: the slice's pages only.
    expect([slices[0].firstPage, slices[0].lastPage]).toEqual([0, Math.floor((399 * 65 + 7) / 1024)]);
  });
});
