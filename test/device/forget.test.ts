/**
 * Device address spaces do not outlive their files: DeviceMemory.forget destroys a space's page
 * table and fault buffer once it holds no frame, refuses while it still does, and refuses the
 * forgotten table afterwards; each device policy (mirror, migrate) forgets a file's space when unmount drops the whole
 * file, so remounting again and again with device work between keeps the live spaces bounded.
 */
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceMemory, patternBytes } from '../../src/device/index.ts';
import { HmmlabError } from '../../src/errors.ts';
import type { GpuDevice } from '../../src/gpu/device.ts';
import { diskBytes, expectBytes, mountDevice, openGpu, POLICIES } from '../policy/helpers.ts';
import { HostBacking } from './backing.ts';

const SEED = Number(process.env.HMMLAB_SEED ?? Date.now() % 1_000_000);
console.log(`forget tests: seed ${SEED} (replay with HMMLAB_SEED=${SEED})`);

let gpu: GpuDevice;
beforeAll(async () => {
  gpu = await openGpu();
});
afterAll(() => gpu?.destroy());

describe('DeviceMemory.forget', () => {
  it('refuses a space that still maps a page, then frees it once the page is revoked', async () => {
    const ps = 4096;
    const dm = await DeviceMemory.create(gpu, { devicePages: 8, pageSize: ps });
    try {
      const hb = new HostBacking(dm, ps);
      const space = dm.space(7);
      expect(dm.spaceCount).toBe(1);
      const r = await dm.runKernel('devwrite', space, { off: 0, len: 2 * ps, tag: 3 }, hb.servicer);
      expect(r.error).toBeUndefined();
      expect(() => dm.forget(7)).toThrow(/pages 0-1 still hold device frames/);
      expect(dm.spaceCount).toBe(1);
      const changes = await dm.revoke(space, [0, 1]);
      expect(changes.every((c) => c.dirty)).toBe(true);
      const data = await dm.copyFromFrames(changes.map((c) => c.frame));
      dm.freeFrames(changes.map((c) => c.frame));
      expectBytes(data[0], patternBytes(0, ps, 3), 'page 0 before forget');
      expect(dm.forget(7)).toBe(true);
      expect(dm.spaceCount).toBe(0);
      expect(dm.forget(7)).toBe(false);
      // The forgotten table cannot reach the GPU again; space(7) is a fresh, empty one.
      await expect(dm.runKernel('devread', space, { off: 0, len: ps }, hb.servicer)).rejects.toThrow(
        /not live on this device/,
      );
      await expect(dm.revoke(space, [0])).rejects.toBeInstanceOf(HmmlabError);
      const fresh = dm.space(7);
      expect(fresh).not.toBe(space);
      expect(fresh.entries.size).toBe(0);
      const snap = await dm.snapshot(fresh, 0, 1);
      expect(snap.map((s) => s.perm)).toEqual(['none', 'none']);
    } finally {
      dm.destroy();
    }
  });
});

describe.each(POLICIES)('%s policy: unmount forgets the device address space', (policy) => {
  it('20 remounts with device ops between keep the live spaces bounded and the data intact', async () => {
    const ps = 4096;
    const pages = 3;
    const l = await mountDevice(gpu, { policy, pageSize: ps, hostPages: 16, devicePages: 8 });
    try {
      const want = { a: new Uint8Array(pages * ps), b: new Uint8Array(pages * ps) };
      const counts: number[] = [];
      for (let round = 0; round < 20; round++) {
        const tag = (SEED + round) % 1000;
        const a = await l.fs.open('a', { create: true });
        const b = await l.fs.open('b', { create: true });
        if (round === 0) {
          await a.write(0, want.a);
          await b.write(0, want.b);
        }
        // Device writes on both files (a: a page-unaligned range), a devread of b's old data.
        const off = (round % (pages - 1)) * ps + 4 * (round % 7);
        await a.deviceWrite(off, ps, tag);
        want.a.set(patternBytes(off, ps, tag), off);
        expectBytes(await b.deviceRead(0, pages * ps), want.b, `round ${round}: devread b`);
        await b.deviceWrite(ps, ps, tag + 1);
        want.b.set(patternBytes(ps, ps, tag + 1), ps);
        expectBytes(await a.read(0, pages * ps), want.a, `round ${round}: read a`);
        counts.push(l.dm.spaceCount);
        await l.fs.remount();
        counts.push(l.dm.spaceCount);
        expectBytes(diskBytes(l.dir, 'a'), want.a, `round ${round}: disk a after remount`);
        expectBytes(diskBytes(l.dir, 'b'), want.b, `round ${round}: disk b after remount`);
      }
      // Two files open: two spaces while mounted, none after each unmount.
      expect(Math.max(...counts)).toBe(2);
      expect(counts.filter((_, i) => i % 2 === 1).every((n) => n === 0)).toBe(true);
      expect(l.dm.pool.freeCount).toBe(8);
    } finally {
      await l.cleanup();
    }
    expect(fs.existsSync(l.dir)).toBe(false);
  });
});
