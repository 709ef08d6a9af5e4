/**
 * Device ops that span many kernel chunks through a policy and HmmFs, for every policy with a
 * device: the data of devwrite, devread (streamed to a sink), checksum and atomic over a file far
 * larger than the device's frames and the host's pages, the counters a chunk at a time; and a
 * replayed log with chunked kernels and streamed host ops giving the records of an unchunked
 * replay, also with a fault injected at any transient point in the middle of the run (a launch in
 * a middle chunk, a copy, a frame allocation, a raced install, ...).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceMemory } from '../../src/device/index.ts';
import { HmmFs } from '../../src/fs/hmmfs.ts';
import type { GpuDevice } from '../../src/gpu/device.ts';
import { FaultInjector, TRANSIENT_POINTS } from '../../src/inject/inject.ts';
import { type ReplayRecord, replayOplog } from '../../src/oplog/replay.ts';
import type { Op } from '../../src/oplog/schema.ts';
import type { DevicePolicy } from '../../src/policy/device.ts';
import { checkInvariants } from '../../src/policy/invariants.ts';
import { createDevicePolicy, DEVICE_POLICY_NAMES } from '../../src/policy/registry.ts';
import { atomicTotals, delta, expectBytes, openGpu, pattern, u32 } from './helpers.ts';

/** The policies with a device: a new one (migrate) joins the list here. */
/** Every device policy of the registry, each over its own device memory. */
const POLICIES: { name: string; make: (dm: DeviceMemory) => DevicePolicy }[] = DEVICE_POLICY_NAMES.map(
  (name) => ({ name, make: (dm: DeviceMemory) => createDevicePolicy(name, dm) }),
);

const PS = 4096;
const CHUNK = 4 * PS; // a kernel launch covers 4 pages
const PAGES = 40; // the file: 5x the device's frames, 5x the host's pages

let gpu: GpuDevice;
let tmp: string;
beforeAll(async () => {
  gpu = await openGpu();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'hmmlab-chunks-'));
});
afterAll(() => {
  gpu?.destroy();
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe.each(POLICIES)('device ops over many chunks, policy $name', ({ make }) => {
  async function mount() {
    const dm = await DeviceMemory.create(gpu, { devicePages: 8, pageSize: PS, chunkBytes: CHUNK });
    const hfs = await HmmFs.mount({
      dir: fs.mkdtempSync(path.join(tmp, 'm-')),
      pageSize: PS,
      hostPages: 8,
      policy: make(dm),
    });
    const f = await hfs.open('big.dat', { create: true });
    await f.write(0, pattern(0, PAGES * PS, 1));
    return {
      dm,
      hfs,
      f,
      async done() {
        await checkInvariants(hfs);
        await hfs.unmount();
        dm.destroy();
      },
    };
  }

  it('devwrite, devread and read(2) match the pattern; each chunk faults its pages once and replays once', async () => {
    const { hfs, f, done } = await mount();
    const off = 3 * PS + 4;
    const len = 30 * PS; // pages 3..33: 31 pages, 8 chunks
    const before = { ...hfs.vmstat() };
    await f.deviceWrite(off, len, 2);
    const w = delta(before, hfs.vmstat());
    expect(w.device_faults_unique).toBe(31);
    expect(w.device_write_faults).toBe(31);
    // Chunks of 4 pages from page 3: 3, 4-7, ..., 32-33 (the last 2 pages), a fault launch and a replay each.
    expect([w.device_launches, w.device_replays]).toEqual([16, 8]);
    const want = pattern(0, PAGES * PS, 1);
    want.set(pattern(off, len, 2), off);

    const parts: Uint8Array[] = [];
    const r = await f.deviceRead(0, PAGES * PS, (bytes) => parts.push(bytes.slice()));
    expect(r.length).toBe(0); // streamed: no buffer as large as the op
    expectBytes(Buffer.concat(parts), want, 'devread of the whole file, chunk by chunk');
    expectBytes(await f.read(0, PAGES * PS), want, 'read(2) after');
    await f.fsync();
    await done();
  });

  it('checksum and atomic over chunks are exact', async () => {
    const { f, done } = await mount();
    const sums = await f.deviceChecksum(0, PAGES * PS);
    const file = pattern(0, PAGES * PS, 1);
    expect(sums).toEqual(
      Array.from({ length: PAGES }, (_, i) =>
        u32(file.subarray(i * PS, (i + 1) * PS)).reduce((s, x) => (s + x) >>> 0, 0),
      ),
    );
    const words = 10 * (PS / 4);
    const threads = 3 * (CHUNK / 4) + 100; // 4 slices of threads
    await f.deviceAtomicInc(PS, words, threads, 2);
    const got = u32(await f.read(PS, words * 4));
    const base = u32(file.subarray(PS, PS + words * 4));
    const add = atomicTotals(words, threads, 2);
    expect(got).toEqual(base.map((x, i) => (x + add[i]) >>> 0));
    await done();
  });
});

describe.each(POLICIES)(
  'a replayed log with chunked kernels and streamed host ops, policy $name',
  ({ make }) => {
    const MiB = 1 << 20;
    const ops: Op[] = [
      { op: 'write', off: 0, len: MiB, tag: 1 },
      { op: 'devread', off: 4096, len: MiB - 8192 },
      { op: 'devwrite', off: 12, len: MiB - 100, tag: 2 },
      { op: 'mapwrite', off: MiB - 70_000, len: 140_000, tag: 3 },
      { op: 'read', off: 100, len: 2 * MiB },
      { op: 'fsync' },
      { op: 'diowrite', off: 65_536, len: 300 * 512, tag: 4 },
      { op: 'mapread', off: 0, len: MiB + 70_000 },
      { op: 'dropcaches' },
      { op: 'dioread', off: 0, len: 2 * MiB },
      { op: 'devread', off: 0, len: MiB },
      { op: 'remount' },
      { op: 'devwrite', off: MiB / 2, len: MiB / 2, tag: 5 },
      { op: 'read', off: 0, len: MiB + 70_000 },
    ];

    async function replay(chunked: boolean, inject?: FaultInjector) {
      const dm = await DeviceMemory.create(gpu, {
        devicePages: 32,
        pageSize: PS,
        chunkBytes: chunked ? 8 * PS : undefined,
      });
      const records: ReplayRecord[] = [];
      try {
        await replayOplog(ops, {
          pageSize: PS,
          hostPages: 16,
          policy: make(dm),
          check: true,
          streamChunk: chunked ? 32 * 1024 : undefined,
          inject,
          onRecord: (r) => records.push(r),
          afterOp: (fs) => checkInvariants(fs),
          afterFailedAttempt: (fs) => checkInvariants(fs),
        });
      } finally {
        dm.destroy();
      }
      return { records, dm };
    }

    let baseline: ReplayRecord[];
    beforeAll(async () => {
      baseline = (await replay(false)).records;
    });

    it('gives the records of the unchunked replay, every read checked against the model', async () => {
      const { records, dm } = await replay(true);
      expect(records).toEqual(baseline);
      expect(dm.counters.chunks).toBeGreaterThan(100); // a device op of 1 MiB is 32 chunks of 32 KiB
    });

    it('gives the same records with a fault injected at any transient point, mid-run (the op is run again)', async () => {
      const counting = new FaultInjector();
      await replay(true, counting);
      expect(counting.attempts['kernel-launch']).toBeGreaterThan(200);
      for (const point of TRANSIENT_POINTS) {
        const n = counting.attempts[point];
        if (n === 0) continue; // a point this log never reaches
        const inject = new FaultInjector({ specs: [{ point, nth: Math.ceil(n / 2) }] });
        const { records } = await replay(true, inject);
        expect(inject.fired[point], point).toBe(1);
        expect(records, point).toEqual(baseline);
      }
    });
  },
);
