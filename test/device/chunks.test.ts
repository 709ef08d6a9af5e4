/**
 * Device ops of many chunks (DeviceMemoryOptions.chunkBytes lowered to a few pages), on the real
 * adapter with the dmirror-like servicer of backing.ts: every kernel gives the unchunked result
 * with the same faults, a chunk's faults are serviced before the next chunk launches, devread
 * streams into a sink in file order, a refusal fails its page's words only, a launch that fails in
 * a later chunk leaves the earlier chunks done and the run can be repeated, and offsets past 4 GiB
 * are exact.
 */
import { describe, expect, it } from 'vitest';
import {
  type FaultResolution,
  type FaultServicer,
  patternBytes,
  wordChecksum,
} from '../../src/device/index.ts';
import { FaultInjector } from '../../src/inject/inject.ts';
import { atomicTotals, expectBytes, u32 } from '../policy/helpers.ts';
import { deviceRig } from './backing.ts';

const setup = deviceRig();

/** Some bytes that are not the pattern of any tag: position-dependent, seedless. */
function fileBytes(n: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 7 + (i >>> 9)) & 0xff);
}

describe.each([4096, 65536])('kernels over many chunks, page size %i', (pageSize) => {
  const pages = 11;
  // Not page aligned at either end: the first and last chunks hold part of a page.
  const off = pageSize - 8;
  const len = (pages - 2) * pageSize + 20;
  const chunkPages = 2;
  const chunks = Math.ceil(
    (Math.floor((off + len - 1) / pageSize) + 1 - Math.floor(off / pageSize)) / chunkPages,
  );

  /** One op on a chunked device and on an unchunked one, from the same file bytes. */
  async function both(kind: 'devwrite' | 'devread' | 'checksum') {
    const out = [];
    for (const chunkBytes of [chunkPages * pageSize, 64 << 20]) {
      const { dm, hb } = await setup({ devicePages: 16, pageSize, chunkBytes });
      hb.bytes(1, pages * pageSize).set(fileBytes(pages * pageSize));
      const r = await dm.runKernel(kind, dm.space(1), { off, len, tag: 5 }, hb.servicer);
      await hb.syncBack(1);
      out.push({ r, file: hb.bytes(1).slice(0, pages * pageSize) });
    }
    return { chunked: out[0], whole: out[1] };
  }

  it.each(['devwrite', 'devread', 'checksum'] as const)(
    '%s: the unchunked result, the same faults, two launches a chunk',
    async (kind) => {
      const { chunked, whole } = await both(kind);
      const { r } = chunked;
      expect([r.chunks, whole.r.chunks]).toEqual([chunks, 1]);
      expect([r.launches, r.replays]).toEqual([2 * chunks, chunks]);
      expectBytes(chunked.file, whole.file, `${kind}: the file after`);
      if (kind === 'devwrite') {
        const want = fileBytes(pages * pageSize);
        want.set(patternBytes(off, len, 5), off);
        expectBytes(chunked.file, want, 'devwrite: the pattern over every chunk');
      }
      if (kind === 'devread')
        expectBytes(r.bytes!, fileBytes(pages * pageSize).subarray(off, off + len), 'devread');
      if (kind === 'checksum') {
        expect(r.checksums).toEqual(whole.r.checksums);
        const first = r.checksums![0];
        expect(first.index).toBe(0);
        expect(first.sum).toBe(wordChecksum(fileBytes(pageSize).subarray(off, pageSize)).sum);
      }
      // A page is in one chunk only: its faults are those of the unchunked op.
      for (const k of [
        'faultsRaw',
        'faultsUnique',
        'faultsRead',
        'faultsWrite',
        'bytesHostToDevice',
      ] as const) {
        expect(r.counters[k], k).toBe(whole.r.counters[k]);
      }
      expect(r.counters.chunks).toBe(chunks);
      // Per-batch records add up to the counters and come chunk by chunk, in order.
      expect(r.batches.reduce((s, b) => s + b.faultsUnique, 0)).toBe(r.counters.faultsUnique);
      expect(r.batches.reduce((s, b) => s + b.faultsRaw, 0)).toBe(r.counters.faultsRaw);
      expect(r.batches.map((b) => b.chunk)).toEqual([...Array(chunks).keys()]);
      expect(r.batches.map((b) => b.launch)).toEqual(Array.from({ length: chunks }, (_, c) => 2 * c + 1));
    },
  );

  it('atomic: threads in slices, increments exact, each page faulted once', async () => {
    const words = pages * (pageSize / 4);
    const threads = 8192;
    const k = 3;
    const { dm, hb } = await setup({ devicePages: 16, pageSize, chunkBytes: 1024 * 4 });
    const r = await dm.runKernel('atomic', dm.space(2), { off: 0, len: words * 4, threads, k }, hb.servicer);
    expect(r.chunks).toBe(threads / 1024);
    expect(r.failed).toEqual([]);
    const spread = Math.max(1, Math.floor(words / threads));
    const lastPage = Math.floor(((threads - 1) * spread + k - 1) / (pageSize / 4));
    expect(r.counters.faultsUnique).toBe(lastPage + 1);
    await hb.syncBack(2);
    expect(u32(hb.bytes(2).subarray(0, words * 4))).toEqual(atomicTotals(words, threads, k));
  });
});

describe('devread into a sink', () => {
  it('hands each chunk over in file order, and returns no buffer as large as the op', async () => {
    const pageSize = 4096;
    const { dm, hb } = await setup({ devicePages: 8, pageSize, chunkBytes: 3 * pageSize });
    const data = fileBytes(20 * pageSize);
    hb.bytes(3, data.length).set(data);
    const got: [number, number][] = [];
    const parts: Uint8Array[] = [];
    const off = 100;
    const len = 18 * pageSize;
    const r = await dm.runKernel('devread', dm.space(3), { off, len }, hb.servicer, (bytes, at) => {
      got.push([at, bytes.length]);
      parts.push(bytes.slice());
    });
    expect(r.bytes).toBeUndefined();
    expect(got[0]).toEqual([off, 3 * pageSize - off]);
    for (let i = 1; i < got.length; i++) expect(got[i][0]).toBe(got[i - 1][0] + got[i - 1][1]);
    expect(got.length).toBe(r.chunks);
    expectBytes(Buffer.concat(parts), data.subarray(off, off + len), 'bytes through the sink');
  });
});

describe('errors in a later chunk', () => {
  const pageSize = 4096;

  it('a refused page fails its own words only; the other chunks land', async () => {
    const { dm, hb } = await setup({ devicePages: 16, pageSize, chunkBytes: 2 * pageSize });
    hb.refuseWrite.add(5);
    const r = await dm.runKernel('devwrite', dm.space(4), { off: 0, len: 8 * pageSize, tag: 2 }, hb.servicer);
    expect(r.failed.map((f) => [f.index, f.items])).toEqual([[5, pageSize / 4]]);
    expect(r.error?.code).toBe('EFAULT');
    await hb.syncBack(4);
    const want = patternBytes(0, 8 * pageSize, 2);
    want.fill(0, 5 * pageSize, 6 * pageSize);
    expectBytes(hb.bytes(4).subarray(0, 8 * pageSize), want, 'every page but the refused one');
    const ptes = await dm.snapshot(dm.space(4), 0, 7);
    expect(ptes.filter((p) => p.failRead || p.failWrite)).toEqual([]);
  });

  it('a launch that fails in chunk 3 leaves chunks 1-2 done; the run again completes', async () => {
    const { dm, hb } = await setup({ devicePages: 16, pageSize, chunkBytes: 2 * pageSize });
    const space = dm.space(5);
    const inject = new FaultInjector({ specs: [{ point: 'kernel-launch', nth: 5 }] }); // chunk 3's first
    dm.inject = inject;
    const range = { off: 0, len: 8 * pageSize, tag: 6 };
    await expect(dm.runKernel('devwrite', space, range, hb.servicer)).rejects.toMatchObject({ code: 'EGPU' });
    expect(inject.fired['kernel-launch']).toBe(1);
    expect([...space.entries.keys()].sort((a, b) => a - b)).toEqual([0, 1, 2, 3]);
    expect(space.pending.size).toBe(0);
    await hb.syncBack(5);
    expectBytes(hb.bytes(5).subarray(0, 4 * pageSize), patternBytes(0, 4 * pageSize, 6), 'chunks 1-2');
    const r = await dm.runKernel('devwrite', space, range, hb.servicer);
    // Chunks 1-2 are mapped already: one launch each; chunks 3-4 fault and replay.
    expect([r.chunks, r.launches, r.counters.faultsUnique]).toEqual([4, 6, 4]);
    await hb.syncBack(5);
    expectBytes(hb.bytes(5).subarray(0, 8 * pageSize), patternBytes(0, 8 * pageSize, 6), 'the whole range');
  });
});

describe('files past 4 GiB', () => {
  it('devwrite and devread at 6 GiB + 12, over chunks, are exact', async () => {
    const pageSize = 4096;
    const { dm } = await setup({ devicePages: 8, pageSize, chunkBytes: 2 * pageSize });
    // A sparse backing (a page a Map entry): HostBacking would hold 6 GiB.
    const data = new Map<number, Uint8Array>();
    const page = (i: number) => {
      const p = data.get(i) ?? new Uint8Array(pageSize);
      data.set(i, p);
      return p;
    };
    dm.setEvictionHook(async (victims, memory) => {
      const dirty = victims.filter((v) => v.dirty);
      const bytes = await memory.copyFromFrames(dirty.map((v) => v.frame));
      dirty.forEach((v, i) => {
        page(v.index).set(bytes[i]);
      });
      return undefined;
    });
    const servicer: FaultServicer = async (faults, ctx) => {
      const fresh = faults.filter((f) => !ctx.lookup(f.index));
      const frames = await ctx.allocFrames(fresh.map((f) => f.index));
      await ctx.copyToFrames(fresh.map((f, i) => ({ frame: frames[i]!, data: page(f.index) })));
      const frameOf = new Map(fresh.map((f, i) => [f.index, frames[i]!]));
      return faults.map(
        (f): FaultResolution => ({
          ok: true,
          frame: ctx.lookup(f.index)?.frame ?? frameOf.get(f.index)!,
          perm: f.write ? 'rw' : 'ro',
        }),
      );
    };
    const off = 6 * 2 ** 30 + 12;
    const len = 5 * pageSize;
    const space = dm.space(6);
    const w = await dm.runKernel('devwrite', space, { off, len, tag: 9 }, servicer);
    expect(w.chunks).toBe(3);
    const r = await dm.runKernel('devread', space, { off: off - 4, len: len + 8 }, servicer);
    const want = new Uint8Array(len + 8);
    want.set(patternBytes(off, len, 9), 4);
    expectBytes(r.bytes!, want, 'devread at 6 GiB');
  });
});
