/**
 * The device layer on the real adapter, with a dmirror-like servicer that backs pages with a host
 * array (backing.ts). One behaviour a test, for page sizes 4 KiB and 64 KiB: devwrite and devread
 * data, in-kernel fault coalescing, batch size, replay counts, exact atomics across replays, dirty
 * bits, an EFAULT refusal, eviction with a tiny pool, revoke and write-protect, the mmu_interval
 * retry, the fault-loop cap, frame pools that span several buffers, checksums.
 */
import { describe, expect, it } from 'vitest';
import { type FaultServicer, patternBytes, wordChecksum } from '../../src/device/index.ts';
import { HmmlabError } from '../../src/errors.ts';
import { deviceRig } from './backing.ts';

const SEED = Number(process.env.HMMLAB_SEED ?? Date.now() % 1_000_000);
console.log(`device tests: seed ${SEED} (replay with HMMLAB_SEED=${SEED})`);

/** Seeded bytes (xorshift32), so a failure can be replayed. */
function randomBytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed * 2654435761 + 1 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

const setup = deviceRig();

function expectBytes(got: Uint8Array, want: Uint8Array, what: string): void {
  expect(got.byteLength, what).toBe(want.byteLength);
  const i = got.findIndex((b, k) => b !== want[k]);
  expect(i, `${what}: first differing byte`).toBe(-1);
}

describe.each([4096, 65536])('device memory, page size %i', (pageSize) => {
  const pw = pageSize / 4;

  it('devwrite writes exactly the op-log pattern in a range that is not page aligned', async () => {
    const { dm, hb } = await setup({ devicePages: 16, pageSize });
    const size = 4 * pageSize;
    const before = randomBytes(size, SEED);
    hb.bytes(1, size).set(before);
    const off = pageSize - 12;
    const len = 2 * pageSize + 20;
    const r = await dm.runKernel('devwrite', dm.space(1), { off, len, tag: 9 }, hb.servicer);
    expect(r.failed).toEqual([]);
    await hb.syncBack(1);
    const want = before.slice();
    want.set(patternBytes(off, len, 9), off);
    expectBytes(hb.bytes(1).subarray(0, size), want, 'file after devwrite');
  });

  it('devread returns the exact bytes of the range', async () => {
    const { dm, hb } = await setup({ devicePages: 16, pageSize });
    const data = randomBytes(3 * pageSize, SEED + 1);
    hb.bytes(2, data.byteLength).set(data);
    const off = 8;
    const len = 3 * pageSize - 16;
    const r = await dm.runKernel('devread', dm.space(2), { off, len }, hb.servicer);
    expectBytes(r.bytes!, data.subarray(off, off + len), 'devread bytes');
    expect(r.counters.faultsRead).toBe(3);
    expect(r.counters.faultsWrite).toBe(0);
  });

  it('16,384 threads on 4 pages record 4 unique faults and 16,384 raw ones', async () => {
    const { dm, hb } = await setup({ devicePages: 8, pageSize });
    const r = await dm.runKernel(
      'atomic',
      dm.space(3),
      { off: 0, len: 4 * pageSize, threads: 16_384, k: 1 },
      hb.servicer,
    );
    expect(r.threads).toBeGreaterThanOrEqual(16_384);
    expect(r.counters.faultsUnique).toBe(4);
    expect(r.counters.faultsRaw).toBe(16_384);
    expect(r.counters.faultsDuplicate).toBe(16_380);
    expect(r.batches[0].faultsRaw).toBe(16_384);
  });

  it('honors the fault batch size', async () => {
    const batchSize = pageSize === 4096 ? 256 : 16;
    const rest = pageSize === 4096 ? 88 : 5;
    const pages = 2 * batchSize + rest;
    const { dm, hb } = await setup({ devicePages: pages, pageSize, batchSize });
    const r = await dm.runKernel('devread', dm.space(4), { off: 0, len: pages * pageSize }, hb.servicer);
    expect(r.batches.map((b) => b.faultsUnique)).toEqual([batchSize, batchSize, rest]);
    expect(hb.served.map((b) => b.length)).toEqual([batchSize, batchSize, rest]);
    expect(r.counters.batches).toBe(3);
    expect(r.batches[0].bytesHostToDevice).toBe(batchSize * pageSize);
  });

  it('serializes kernel runs on one space', async () => {
    const { dm, hb } = await setup({ devicePages: 8, pageSize });
    const space = dm.space(15);
    const runs = await Promise.all([
      dm.runKernel('atomic', space, { off: 0, len: 8, threads: 1024, k: 2 }, hb.servicer),
      dm.runKernel('atomic', space, { off: 0, len: 8, threads: 1024, k: 3 }, hb.servicer),
    ]);
    expect(runs[0].counters.faultsUnique).toBe(1);
    expect(runs[1].counters.faultsUnique).toBe(0);
    await hb.syncBack(15);
    expect([...new Uint32Array(hb.bytes(15).buffer, 0, 2)]).toEqual([2560, 2560]);
  });

  it('replays once after a fault round, and not at all once the pages are mapped', async () => {
    const { dm, hb } = await setup({ devicePages: 8, pageSize });
    const range = { off: 0, len: 4 * pageSize, tag: 1 };
    const first = await dm.runKernel('devwrite', dm.space(5), range, hb.servicer);
    expect([first.launches, first.replays]).toEqual([2, 1]);
    const second = await dm.runKernel('devwrite', dm.space(5), range, hb.servicer);
    expect([second.launches, second.replays, second.counters.faultsRaw]).toEqual([1, 0, 0]);
  });

  it('atomic increments are exact across replays and evictions (one frame, two pages)', async () => {
    const { dm, hb } = await setup({ devicePages: 1, pageSize });
    const space = dm.space(6);
    // Two words, the last of page 0 and the first of page 1: each thread alternates pages.
    const r = await dm.runKernel(
      'atomic',
      space,
      { off: pageSize - 4, len: 8, threads: 16_384, k: 4 },
      hb.servicer,
    );
    expect(r.replays).toBeGreaterThanOrEqual(3);
    expect(r.counters.evictions).toBeGreaterThan(0);
    await dm.detach();
    const words = new Uint32Array(hb.bytes(6).buffer, pageSize - 4, 2);
    expect([...words]).toEqual([32_768, 32_768]);
  });

  it('thrashing one frame over three pages still ends, with exact atomic totals', async () => {
    const { dm, hb } = await setup({ devicePages: 1, pageSize });
    const off = pageSize - 4;
    const nwords = pw + 2; // the last word of page 0, all of page 1, the first of page 2
    const threads = 4096;
    const k = 3;
    const r = await dm.runKernel('atomic', dm.space(17), { off, len: nwords * 4, threads, k }, hb.servicer);
    await dm.detach();
    const want = new Uint32Array(nwords);
    const spread = Math.max(1, Math.floor(nwords / threads));
    for (let i = 0; i < threads; i++) for (let j = 0; j < k; j++) want[(i * spread + j) % nwords]++;
    expect([...new Uint32Array(hb.bytes(17, off + nwords * 4).slice(off, off + nwords * 4).buffer)]).toEqual([
      ...want,
    ]);
    expect(r.counters.evictions).toBeGreaterThanOrEqual(2);
  });

  it('sets the dirty bit only on pages a kernel wrote', async () => {
    const { dm, hb } = await setup({ devicePages: 8, pageSize });
    const space = dm.space(7);
    await dm.runKernel('devwrite', space, { off: 0, len: 4 * pageSize, tag: 2 }, hb.servicer);
    expect(await dm.readDirty(space, 0, 3)).toEqual([0, 1, 2, 3]);
    await dm.clearDirty(space, [0, 1, 2, 3]);
    const r = await dm.runKernel('devwrite', space, { off: pageSize + 4, len: 8, tag: 3 }, hb.servicer);
    expect(r.counters.faultsRaw).toBe(0);
    expect(await dm.readDirty(space, 0, 3)).toEqual([1]);
    const snap = await dm.snapshot(space, 0, 4);
    expect(snap.map((s) => [s.perm, s.dirty])).toEqual([
      ['rw', false],
      ['rw', true],
      ['rw', false],
      ['rw', false],
      ['none', false],
    ]);
  });

  it('a refused write (EFAULT) fails only that page, and the other pages are written', async () => {
    const { dm, hb } = await setup({ devicePages: 8, pageSize });
    const before = randomBytes(4 * pageSize, SEED + 2);
    hb.bytes(8, before.byteLength).set(before);
    hb.refuseWrite.add(2);
    const space = dm.space(8);
    const r = await dm.runKernel('devwrite', space, { off: 0, len: 4 * pageSize, tag: 5 }, hb.servicer);
    expect(r.failed.map((f) => [f.index, f.write, f.code, f.items])).toEqual([[2, true, 'EFAULT', pw]]);
    expect(r.error).toBeInstanceOf(HmmlabError);
    expect(r.error!.code).toBe('EFAULT');
    expect(r.error!.message).toMatch(/page 2 \(write/);
    await hb.syncBack(8);
    const want = patternBytes(0, 4 * pageSize, 5);
    want.set(before.subarray(2 * pageSize, 3 * pageSize), 2 * pageSize);
    expectBytes(hb.bytes(8).subarray(0, 4 * pageSize), want, 'file after a refused page');
    // The refusal held for that launch only: no FAIL bit is left behind.
    const snap = await dm.snapshot(space, 2, 2);
    expect(snap[0]).toMatchObject({ perm: 'none', failWrite: false });
  });

  it('eviction with a tiny frame pool keeps data intact', async () => {
    const { dm, hb } = await setup({ devicePages: 3, pageSize, batchSize: 2 });
    const space = dm.space(9);
    const pages = 8;
    const w = await dm.runKernel('devwrite', space, { off: 0, len: pages * pageSize, tag: 4 }, hb.servicer);
    expect(w.counters.evictions).toBeGreaterThanOrEqual(pages - 3);
    expect(hb.evictedDirty).toBeGreaterThan(0);
    const r = await dm.runKernel('devread', space, { off: 0, len: pages * pageSize }, hb.servicer);
    expectBytes(r.bytes!, patternBytes(0, pages * pageSize, 4), 'devread after evictions');
    await dm.detach();
    expectBytes(hb.bytes(9).subarray(0, pages * pageSize), patternBytes(0, pages * pageSize, 4), 'backing');
    expect(dm.stats().framesUsed).toBe(0);
  });

  it('eviction copies back only the frames the device wrote', async () => {
    const { dm, hb } = await setup({ devicePages: 2, pageSize });
    const space = dm.space(16);
    await dm.runKernel('devwrite', space, { off: 0, len: 2 * pageSize, tag: 1 }, hb.servicer);
    await hb.syncBack(16);
    await dm.clearDirty(space, [0, 1]);
    await dm.runKernel('devwrite', space, { off: pageSize, len: 4, tag: 2 }, hb.servicer);
    // Pages 2 and 3 need both frames: page 0 (writable, clean) and page 1 (dirty) are evicted.
    await dm.runKernel('devread', space, { off: 2 * pageSize, len: 2 * pageSize }, hb.servicer);
    expect([hb.evicted, hb.evictedDirty]).toEqual([2, 1]);
    expect(dm.counters.bytesDeviceToHost).toBe(2 * pageSize + pageSize); // syncBack, then one page
    const want = patternBytes(0, 2 * pageSize, 1);
    want.set(patternBytes(pageSize, 4, 2), pageSize);
    expectBytes(hb.bytes(16).subarray(0, 2 * pageSize), want, 'pages 0-1 after eviction');
  });

  it('a revoked page faults again on the next access, and a write-protected one on a store', async () => {
    const { dm, hb } = await setup({ devicePages: 8, pageSize });
    const space = dm.space(10);
    await dm.runKernel('devwrite', space, { off: 0, len: 2 * pageSize, tag: 6 }, hb.servicer);
    const revoked = await dm.revoke(space, [0]);
    expect(revoked).toEqual([{ index: 0, frame: revoked[0].frame, dirty: true, perm: 'rw' }]);
    const [page0] = await dm.copyFromFrames([revoked[0].frame]);
    expectBytes(page0, patternBytes(0, pageSize, 6), 'revoked frame');
    hb.page(10, 0).set(page0);
    dm.freeFrames([revoked[0].frame]);
    expect((await dm.snapshot(space, 0, 0))[0].perm).toBe('none');
    const r = await dm.runKernel('devread', space, { off: 0, len: 2 * pageSize }, hb.servicer);
    expect(hb.served.at(-1)!.map((f) => [f.index, f.write])).toEqual([[0, false]]);
    expect(r.counters.faultsUnique).toBe(1);
    const prot = await dm.protect(space, [1], { cleanDirty: true });
    expect(prot.map((p) => [p.index, p.dirty])).toEqual([[1, true]]);
    expect((await dm.snapshot(space, 1, 1))[0]).toMatchObject({ perm: 'ro', dirty: false });
    const w = await dm.runKernel('devwrite', space, { off: pageSize, len: 4, tag: 7 }, hb.servicer);
    expect(w.counters.faultsWrite).toBe(1);
  });

  it('fault service that races with an invalidation leaves the page to fault again', async () => {
    const { dm, hb } = await setup({ devicePages: 8, pageSize });
    const space = dm.space(11);
    let raced = false;
    const racing: FaultServicer = async (faults, ctx) => {
      const out = await hb.servicer(faults, ctx);
      if (!raced) {
        raced = true;
        space.invalidate([faults[0].index]); // as a CPU write revoking the page mid-service would
      }
      return out;
    };
    const r = await dm.runKernel('devwrite', space, { off: 0, len: 2 * pageSize, tag: 8 }, racing);
    expect(r.counters.faultsRetried).toBe(1);
    expect(r.launches).toBe(3);
    await hb.syncBack(11);
    expectBytes(hb.bytes(11).subarray(0, 2 * pageSize), patternBytes(0, 2 * pageSize, 8), 'after the retry');
  });

  it('gives up with a clear error when service makes no progress', async () => {
    const { dm, hb } = await setup({ devicePages: 8, pageSize });
    // Grants read-only to write faults: the writes can never proceed.
    const wrong: FaultServicer = async (faults, ctx) =>
      (await hb.servicer(faults, ctx)).map((r) => (r.ok ? { ...r, perm: 'ro' as const } : r));
    await expect(dm.runKernel('devwrite', dm.space(12), { off: 0, len: 8, tag: 1 }, wrong)).rejects.toThrow(
      /no progress: pages 0 of space 12/,
    );
  });

  it('checksums computed on the device match the host', async () => {
    const { dm, hb } = await setup({ devicePages: 8, pageSize });
    const data = randomBytes(3 * pageSize, SEED + 3);
    hb.bytes(13, data.byteLength).set(data);
    const r = await dm.runKernel('checksum', dm.space(13), { off: 0, len: 3 * pageSize }, hb.servicer);
    const want = [0, 1, 2].map((p) => ({
      index: p,
      ...wordChecksum(data.slice(p * pageSize, (p + 1) * pageSize)),
    }));
    expect(r.checksums).toEqual(want);
  });
});

describe('fault readback', () => {
  it('reads back more faults than the first readback holds (1,100 pages in one launch)', async () => {
    const pageSize = 4096; // 1,100 pages of 64 KiB is more than a fast test should move
    // One chunk for the whole op (a software adapter's default chunk is 1,024 pages).
    const { dm, hb } = await setup({ devicePages: 1100, pageSize, chunkBytes: 1100 * pageSize });
    const r = await dm.runKernel('devread', dm.space(14), { off: 0, len: 1100 * pageSize }, hb.servicer);
    expect(r.launches).toBe(2);
    expect(r.batches.map((b) => b.faultsUnique)).toEqual([256, 256, 256, 256, 76]);
    expect(new Set(hb.served.flat().map((f) => f.index)).size).toBe(1100);
  });
});

describe('frame pools over several buffers', () => {
  it('kernels and batched copies select the right buffer by frame number', async () => {
    const pageSize = 4096;
    const { dm, hb } = await setup({ devicePages: 8, pageSize, framesPerBuffer: 3 });
    expect(dm.pool.buffers.length).toBe(3);
    const space = dm.space(20);
    await dm.runKernel('devwrite', space, { off: 0, len: 8 * pageSize, tag: 11 }, hb.servicer);
    await hb.syncBack(20);
    expectBytes(hb.bytes(20).subarray(0, 8 * pageSize), patternBytes(0, 8 * pageSize, 11), 'across buffers');
    // One batched copy in, one batched copy out, across all three buffers.
    const data = randomBytes(8 * pageSize, SEED + 4);
    const frames = [...space.entries.values()].map((e) => e.frame);
    await dm.copyToFrames(
      frames.map((frame, i) => ({ frame, data: data.subarray(i * pageSize, (i + 1) * pageSize) })),
    );
    const back = await dm.copyFromFrames(frames);
    back.forEach((p, i) => {
      expectBytes(p, data.subarray(i * pageSize, (i + 1) * pageSize), `frame ${frames[i]}`);
    });
  });

  it('copies from a SharedArrayBuffer view without crashing Dawn', async () => {
    const { dm } = await setup({ devicePages: 2, pageSize: 4096 });
    const shared = new Uint8Array(new SharedArrayBuffer(4096));
    shared.set(randomBytes(4096, SEED + 5));
    const [frame] = await dm.allocFrames(dm.space(21), [0]);
    await dm.copyToFrames([{ frame: frame!, data: shared }]);
    expectBytes((await dm.copyFromFrames([frame!]))[0], shared.slice(), 'shared source');
  });
});
