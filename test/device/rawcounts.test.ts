/**
 * Raw fault counts stay exact although shaders/mmu.wgsl counts an invocation's raw faults privately
 * and adds them to the fault buffer once at the end of the kernel: for every kernel, the run's raw
 * total equals the work items that faulted, the per-page counts of the batch records add up to it,
 * and each page's count is the items on it. Launch times are recorded launch by launch.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceMemory, type KernelKind } from '../../src/device/index.ts';
import type { GpuDevice } from '../../src/gpu/device.ts';
import { openGpu } from '../policy/helpers.ts';
import { HostBacking } from './backing.ts';

const SEED = Number(process.env.HMMLAB_SEED ?? Date.now() % 1_000_000);
console.log(`raw count tests: seed ${SEED} (replay with HMMLAB_SEED=${SEED})`);

let gpu: GpuDevice;
beforeAll(async () => {
  gpu = await openGpu();
});
afterAll(() => gpu?.destroy());

describe.each(['devwrite', 'devread', 'checksum'] as KernelKind[])('raw fault counts, %s', (kind) => {
  it('every word of an unaligned range faults once; per-page counts add up to the total', async () => {
    const ps = 4096;
    const pw = ps / 4;
    // A seeded range of 3 to 40 pages, starting and ending inside a page.
    const first = SEED % 7;
    const pages = 3 + (SEED % 38);
    const off = first * ps + 4 * (1 + (SEED % (pw - 1)));
    const len = (pages - 1) * ps;
    const words = len / 4;
    const dm = await DeviceMemory.create(gpu, { devicePages: 64, pageSize: ps, batchSize: 7 });
    try {
      const hb = new HostBacking(dm, ps);
      const r = await dm.runKernel(kind, dm.space(1), { off, len, tag: 9 }, hb.servicer);
      expect(r.error).toBeUndefined();
      expect(r.launches).toBe(2);
      expect(r.counters.faultsRaw).toBe(words);
      expect(r.batches.reduce((s, b) => s + b.faultsRaw, 0)).toBe(words);
      const perPage = new Map<number, number>();
      for (const f of hb.served.flat()) perPage.set(f.index, (perPage.get(f.index) ?? 0) + f.raw);
      const want = new Map<number, number>();
      for (let w = off / 4; w < off / 4 + words; w++) {
        const p = Math.floor(w / pw);
        want.set(p, (want.get(p) ?? 0) + 1);
      }
      expect([...perPage].sort((a, b) => a[0] - b[0])).toEqual([...want].sort((a, b) => a[0] - b[0]));
      // Launch times: one a launch, their sum in the counters.
      expect(r.launchMs).toHaveLength(r.launches);
      expect(r.launchMs.every((ms) => ms > 0)).toBe(true);
      expect(r.counters.launchMs).toBeCloseTo(
        r.launchMs.reduce((s, ms) => s + ms, 0),
        6,
      );
    } finally {
      dm.destroy();
    }
  });
});

describe('raw fault counts, atomic', () => {
  it('each logical thread faults once a launch until its pages are mapped', async () => {
    const ps = 4096;
    const dm = await DeviceMemory.create(gpu, { devicePages: 8, pageSize: ps });
    try {
      const hb = new HostBacking(dm, ps);
      // 1,000 logical threads of 5 increments over 4 pages: each faults on its first word's page.
      const r = await dm.runKernel(
        'atomic',
        dm.space(1),
        { off: 0, len: 4 * ps, threads: 1000, k: 5 },
        hb.servicer,
      );
      expect(r.error).toBeUndefined();
      const spread = Math.floor((4 * ps) / 4 / 1000);
      const firstPages = new Map<number, number>();
      for (let i = 0; i < 1000; i++) {
        const p = Math.floor((i * spread) / (ps / 4));
        firstPages.set(p, (firstPages.get(p) ?? 0) + 1);
      }
      const served = hb.served[0];
      expect(served.map((f) => [f.index, f.raw])).toEqual([...firstPages].sort((a, b) => a[0] - b[0]));
      expect(r.counters.faultsRaw).toBe(r.batches.reduce((s, b) => s + b.faultsRaw, 0));
      expect(r.counters.faultsRaw).toBeGreaterThanOrEqual(1000);
    } finally {
      dm.destroy();
    }
  });
});
