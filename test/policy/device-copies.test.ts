/**
 * The page cache's own copies to and from the device on the real adapter, under both policies:
 * a prefetch (the staging ring, no kernel, no fault) and read(2) pulling device-written pages back
 * (one submit per pull, straight into the host pages) move exact bytes at page sizes of 4 KiB,
 * 64 KiB and 2 MiB, for files whose size is not a whole number of pages and for ranges that start
 * and end inside pages; the bytes reach the disk. Each of UVM's four replay policies services
 * every fault and replays as its definition says. The file's bytes are random (seed printed).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { fillRandom, firstDifference, newSeed } from '../../src/bench/random.ts';
import { DeviceMemory, REPLAY_POLICIES, type ReplayPolicy } from '../../src/device/index.ts';
import type { HmmlabError } from '../../src/errors.ts';
import { type File, HmmFs } from '../../src/fs/hmmfs.ts';
import { GpuDevice } from '../../src/gpu/device.ts';
import { patternBytes } from '../../src/oplog/pattern.ts';
import { checkInvariants } from '../../src/policy/invariants.ts';
import { createDevicePolicy, DEVICE_POLICY_NAMES, type DevicePolicyName } from '../../src/policy/registry.ts';

const SEED = process.env.HMMLAB_SEED ? Number(process.env.HMMLAB_SEED) : newSeed();
console.log(`device-copies.test.ts seed: HMMLAB_SEED=${SEED}`);

let gpu: GpuDevice;
beforeAll(async () => {
  gpu = await GpuDevice.open();
  gpu.timeoutMs = 30_000;
});
afterAll(() => gpu?.destroy());

interface Lab {
  fs: HmmFs;
  dm: DeviceMemory;
  dir: string;
  f: File;
}
const labs: Lab[] = [];
afterEach(async () => {
  for (const lab of labs.splice(0)) {
    await lab.fs.unmount().catch(() => {});
    lab.dm.destroy();
    fs.rmSync(lab.dir, { recursive: true, force: true });
  }
});

/** A mount over a file of `size` random bytes (written, fsynced, then read whole: cached, clean). */
async function lab(
  policy: DevicePolicyName,
  pageSize: number,
  size: number,
  o: { devicePages?: number; batchSize?: number; replayPolicy?: ReplayPolicy } = {},
): Promise<{ lab: Lab; data: Uint8Array }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hmmlab-devcopies-'));
  const pages = Math.ceil(size / pageSize);
  const dm = await DeviceMemory.create(gpu, {
    devicePages: o.devicePages ?? pages + 4,
    pageSize,
    batchSize: o.batchSize,
    replayPolicy: o.replayPolicy,
  });
  const hfs = await HmmFs.mount({
    dir,
    pageSize,
    hostPages: pages + 8,
    policy: createDevicePolicy(policy, dm),
  });
  const f = await hfs.open('data', { create: true });
  const data = fillRandom(new Uint8Array(size), (SEED ^ Math.imul(pageSize + size, 0x9e3779b1)) >>> 0);
  await f.write(0, data);
  await f.fsync();
  expect(firstDifference(await f.read(0, size), data)).toBe(-1);
  const l = { fs: hfs, dm, dir, f };
  labs.push(l);
  return { lab: l, data };
}

function expectSame(got: Uint8Array, want: Uint8Array, what: string): void {
  expect(got.length, what).toBe(want.length);
  const at = firstDifference(got, want);
  expect(at, `${what}: first difference at byte ${at} (seed ${SEED})`).toBe(-1);
}

/** The file's bytes as the disk holds them, read by a mount of its own (no device). */
async function onDisk(dir: string, pageSize: number, size: number): Promise<Uint8Array> {
  const hfs = await HmmFs.mount({ dir, pageSize, hostPages: 16 });
  try {
    const f = await hfs.open('data');
    expect(f.size).toBe(size);
    return await f.read(0, size);
  } finally {
    await hfs.unmount();
  }
}

// 2 MiB pages: few of them (each is a staging ring buffer's worth, or half of one).
const SHAPES = [
  { pageSize: 4096, size: 37 * 4096 + 124 },
  { pageSize: 65536, size: 9 * 65536 + 4100 },
  { pageSize: 2 << 20, size: 2 * (2 << 20) + 4 },
];

describe.each(DEVICE_POLICY_NAMES)(
  '%s: the page cache copies exact bytes to and from the device',
  (policy) => {
    describe.each(SHAPES)('pages of $pageSize bytes, a file of $size', ({ pageSize, size }) => {
      const pages = Math.ceil(size / pageSize);

      it('prefetch brings every page to the device in batches with no kernel and no fault; devread then reads the file', async () => {
        const { lab: l, data } = await lab(policy, pageSize, size, { batchSize: 4 });
        const c0 = { ...l.dm.counters };
        const r = await l.f.devicePrefetch(0, size);
        expect(r.pages).toBe(pages);
        expect(r.serviced).toBe(pages);
        expect(r.granted).toBe(pages);
        // A kernel chunk's worth of pages at a time (two pages of 2 MiB on a software adapter), in batches of 4.
        const window = Math.max(1, Math.floor(l.dm.chunkBytes / pageSize));
        let batches = 0;
        for (let lo = 0; lo < pages; lo += window) batches += Math.ceil(Math.min(window, pages - lo) / 4);
        expect(r.batches).toBe(batches);
        expect(r.bytesToDevice).toBe(pages * pageSize);
        expect(l.dm.counters.launches).toBe(c0.launches);
        expect(l.dm.counters.faultsUnique).toBe(c0.faultsUnique);
        expect(l.dm.counters.bytesHostToDevice - c0.bytesHostToDevice).toBe(pages * pageSize);
        // Every page is mapped: the kernel faults nowhere and reads what the page cache held.
        expectSame(await l.f.deviceRead(0, size), data, 'devread after prefetch');
        expect(l.dm.counters.faultsUnique).toBe(c0.faultsUnique);
        expect(l.dm.counters.launches).toBe(c0.launches + Math.ceil(size / l.dm.chunkBytes));
        // A second prefetch finds every page mapped: nothing to service, nothing copied.
        const again = await l.f.devicePrefetch(0, size);
        expect(again.serviced).toBe(0);
        expect(l.dm.counters.bytesHostToDevice - c0.bytesHostToDevice).toBe(pages * pageSize);
        await checkInvariants(l.fs);
      });

      it('a devwrite that starts and ends inside pages comes back through read(2) exactly, and reaches the disk', async () => {
        const { lab: l, data } = await lab(policy, pageSize, size);
        const off = pageSize + 8; // device ops move whole words
        const len = size - off - 12;
        const want = data.slice();
        want.set(patternBytes(off, len, 9), off);
        await l.f.devicePrefetch(0, size, true); // writable: the kernel faults nowhere
        const run = await l.f.deviceWrite(off, len, 9);
        expect(run.uniqueFaults).toBe(0);
        // read(2) into a buffer of the caller's, at an offset inside a page, then the whole file.
        const into = new Uint8Array(len + 5).fill(0xee);
        const got = await l.f.read(off, len, into);
        expectSame(got, want.subarray(off, off + len), 'read(2) of the written range into a buffer');
        expect(got.buffer).toBe(into.buffer);
        expect(into[len]).toBe(0xee);
        expectSame(await l.f.read(0, size), want, 'read(2) of the whole file');
        // The pages the kernel wrote came back (1 to pages - 1 of them: page 0 was not written).
        const written = Math.floor((off + len - 1) / pageSize) - Math.floor(off / pageSize) + 1;
        expect(l.dm.counters.bytesDeviceToHost).toBeGreaterThanOrEqual(written * pageSize);
        await l.f.fsync();
        await checkInvariants(l.fs);
        await l.fs.unmount();
        expectSame(await onDisk(l.dir, pageSize, size), want, 'the disk after fsync and unmount');
      });
    });

    it('prefetch of a range inside one page maps that page only; a write prefetch makes it writable', async () => {
      const ps = 4096;
      const { lab: l } = await lab(policy, ps, 8 * ps + 1);
      const r = await l.f.devicePrefetch(3 * ps + 5, 10);
      expect(r).toMatchObject({ pages: 1, serviced: 1, granted: 1, batches: 1, bytesToDevice: ps });
      const w = await l.f.devicePrefetch(3 * ps + 5, ps, true); // pages 3 and 4, writable
      expect(w.pages).toBe(2);
      expect(w.granted).toBe(2);
      const snap = l.fs.snapshot('data', 0, 8).filter((row) => row.dev !== '-');
      expect(snap.map((row) => [row.index, row.dev])).toEqual([
        [3, 'rw'],
        [4, 'rw'],
      ]);
      // The last, partial page of the file (1 byte), and an empty range (nothing at all).
      expect((await l.f.devicePrefetch(8 * ps, 1)).granted).toBe(1);
      expect(await l.f.devicePrefetch(2 * ps, 0)).toMatchObject({ pages: 0, granted: 0, batches: 0 });
      await checkInvariants(l.fs);
    });
  },
);

describe('prefetch and read errors', () => {
  it('a range past EOF is EINVAL; a mount with no device is ENODEV; nothing was mapped; a short read buffer is EINVAL', async () => {
    const { lab: l } = await lab('mirror', 4096, 3 * 4096);
    const err = await l.f.devicePrefetch(4096, 3 * 4096).catch((e: HmmlabError) => e);
    expect((err as HmmlabError).code).toBe('EINVAL');
    expect((err as HmmlabError).message).toMatch(/runs past EOF 12288/);
    expect(l.dm.counters.bytesHostToDevice).toBe(0);
    // read(2) into a buffer shorter than asked: EINVAL, the buffer untouched.
    const short = new Uint8Array(10).fill(7);
    const e3 = await l.f.read(0, 11, short).catch((e: HmmlabError) => e);
    expect((e3 as HmmlabError).code).toBe('EINVAL');
    expect(short.every((b) => b === 7)).toBe(true);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hmmlab-devcopies-'));
    const host = await HmmFs.mount({ dir, pageSize: 4096, hostPages: 8 });
    try {
      const f = await host.open('x', { create: true });
      await f.write(0, new Uint8Array(100));
      const e2 = await f.devicePrefetch(0, 100).catch((e: HmmlabError) => e);
      expect((e2 as HmmlabError).code).toBe('ENODEV');
      expect((e2 as HmmlabError).message).toMatch(/no device/);
    } finally {
      await host.unmount();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("UVM's four replay policies, fault-driven", () => {
  // 40 pages of 64 KiB span two 2 MiB va_blocks (32 pages each); batches of 24 pages.
  const ps = 65536;
  const n = 40;
  const batch = 24;
  /** What each policy's definition says a fault-driven devwrite of every page costs. */
  const expected: Record<ReplayPolicy, { replays: number; batches: number; unique: number }> = {
    // After every fetched fault is serviced, in batches: one replay.
    once: { replays: 1, batches: 2, unique: n },
    // A replay after each batch; the rest stays queued (a refetched fault is a duplicate).
    batch: { replays: 2, batches: 2, unique: n },
    // A replay after each batch, the rest flushed: its pages fault again, counted again.
    'batch-flush': { replays: 2, batches: 2, unique: n + (n - batch) },
    // A replay after each va_block of a batch: pages 0-23, 24-31 (the rest of block 0), 32-39.
    block: { replays: 3, batches: 3, unique: n },
  };

  it.each(DEVICE_POLICY_NAMES.flatMap((p) => REPLAY_POLICIES.map((r) => [p, r] as const)))(
    '%s, replay %s: every page serviced, the replays as defined, the bytes written',
    async (policy, replay) => {
      const size = n * ps - 4;
      const { lab: l, data } = await lab(policy, ps, size, { batchSize: batch, replayPolicy: replay });
      expect(l.dm.replayPolicy).toBe(replay);
      const run = await l.f.deviceWrite(0, size, 4);
      const e = expected[replay];
      expect(run.uniqueFaults).toBe(e.unique);
      expect(run.batches).toBe(e.batches);
      expect(run.replays).toBe(e.replays);
      expect(run.bytesToDevice).toBe(n * ps); // each page copied once, whatever the policy
      expect(run.failed).toEqual([]);
      const want = patternBytes(0, size, 4);
      expect(firstDifference(data, want)).not.toBe(-1); // the write changed the file
      expectSame(await l.f.read(0, size), want, `read(2) after devwrite, replay ${replay}`);
      await checkInvariants(l.fs);
    },
  );
});
