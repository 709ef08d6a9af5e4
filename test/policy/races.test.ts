/**
 * Races where the copy paths (staging, pull, prefetch) meet the concurrent engine (page locks,
 * pending grants, invalidate_lock), each found by a review of the merge and each made to happen
 * here: a second operation starts inside the first one's await (a real method wrapped to open the
 * window, as a scheduler would interleave two tasks), then the state is checked whole.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceMemory } from '../../src/device/index.ts';
import type { GpuDevice } from '../../src/gpu/device.ts';
import { FaultInjector } from '../../src/inject/inject.ts';
import { checkInvariants } from '../../src/policy/invariants.ts';
import { expectBytes, mountDevice, openGpu, pattern } from './helpers.ts';

let gpu: GpuDevice;
beforeAll(async () => {
  gpu = await openGpu();
});
afterAll(() => gpu?.destroy());

const PS = 4096;
const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('a pull that fails puts back what it took', () => {
  it.each(['revoke', 'protect'] as const)('%s: the PTE and a grant not installed yet', async (how) => {
    const dm = await DeviceMemory.create(gpu, { devicePages: 4, pageSize: PS });
    try {
      const space = dm.space(1);
      const [f1, f3] = await dm.allocFrames(space, [1, 3]);
      await dm.map(space, [{ index: 1, frame: f1!, perm: 'rw' }]);
      space.dirty.add(1); // the device wrote page 1: its copy is made ahead
      space.pending.set(3, { frame: f3!, perm: 'rw' }); // granted by fault service, not installed yet
      const inject = new FaultInjector();
      inject.failNext('copy-from-device');
      dm.inject = inject;
      const copies = [{ index: 1, frame: f1!, into: new Uint8Array(PS), always: false }];
      const req = how === 'revoke' ? { revoke: [1, 3], copies } : { protect: [1, 3], copies };
      await expect(dm.pull(space, req)).rejects.toMatchObject({ code: 'ETIMEDOUT' });
      expect(space.entries.get(1)).toEqual({ frame: f1, perm: 'rw' });
      expect(space.pending.get(3)).toEqual({ frame: f3, perm: 'rw' });
    } finally {
      dm.destroy();
    }
  });
});

describe.each(['mirror', 'migrate'] as const)('%s', (policy) => {
  it('a truncate that starts inside a prefetch waits for it (invalidate_lock)', async () => {
    const l = await mountDevice(gpu, { policy, pageSize: PS, hostPages: 32, devicePages: 16 });
    try {
      const f = await l.fs.open('a', { create: true });
      await f.write(0, pattern(0, 4 * PS, 1));
      await f.fsync();
      const dm = l.dm;
      const stage = dm.stageToFrames.bind(dm);
      let truncate: Promise<void> | undefined;
      dm.stageToFrames = async (items) => {
        truncate ??= f.truncate(0);
        await tick(30);
        return stage(items);
      };
      const r = await f.devicePrefetch(0, 4 * PS);
      await truncate;
      dm.stageToFrames = stage;
      expect(truncate).toBeDefined();
      expect(r.granted).toBe(4);
      expect(f.size).toBe(0);
      await checkInvariants(l.fs);
      await f.truncate(4 * PS);
      await f.deviceRead(0, 4 * PS);
      expectBytes(await f.read(0, 4 * PS), new Uint8Array(4 * PS), 'the file re-extended: zeros');
    } finally {
      await l.cleanup();
    }
  });
});

it('mirror: a truncate waiting on a page that reclaim turns into a device entry drops that entry', async () => {
  const l = await mountDevice(gpu, { policy: 'mirror', pageSize: PS, hostPages: 4, devicePages: 16 });
  try {
    const b = await l.fs.open('b', { create: true });
    await b.write(0, pattern(0, 8 * PS, 3));
    await b.fsync();
    const a = await l.fs.open('a', { create: true });
    await a.write(0, pattern(0, PS, 1)); // A dirty
    await a.deviceRead(0, PS); // and a read-only copy on the device: reclaim leaves an entry
    const ops = (a as unknown as { mapping: { a_ops: { writepage: (...x: unknown[]) => Promise<void> } } })
      .mapping.a_ops;
    const writepage = ops.writepage.bind(ops);
    let truncate: Promise<void> | undefined;
    ops.writepage = async (...x: unknown[]) => {
      truncate ??= a.truncate(0); // waits on page 0's lock, which reclaim's writeback holds
      await tick(30);
      return writepage(...x);
    };
    await b.read(0, 8 * PS); // reclaim writes a's page 0 back and leaves a device entry
    await truncate;
    ops.writepage = writepage;
    expect(truncate).toBeDefined();
    await checkInvariants(l.fs);
    expect(l.fs.snapshot('a', 0, 0)[0].host).toBe('-');
    await a.truncate(PS);
    await a.deviceRead(0, PS);
    expectBytes(await a.read(0, PS), new Uint8Array(PS), 'page 0 after the file was cut and re-extended');
  } finally {
    await l.cleanup();
  }
});

it.each(['punch', 'truncate'] as const)(
  'migrate: a %s waiting on pages whose eviction home fails finds them back as they were, and drops them',
  async (how) => {
    const l = await mountDevice(gpu, { policy: 'migrate', pageSize: PS, hostPages: 32, devicePages: 4 });
    try {
      const a = await l.fs.open('a', { create: true });
      await a.write(0, pattern(0, 4 * PS, 1));
      await a.fsync();
      await a.deviceWrite(0, 4 * PS, 2); // a's 4 pages on the device only, written there
      const b = await l.fs.open('b', { create: true });
      await b.write(0, pattern(0, 4 * PS, 3));
      await b.fsync();
      const dm = l.dm;
      const copyFromFrames = dm.copyFromFrames.bind(dm);
      let cut: Promise<void> | undefined;
      dm.copyFromFrames = async (frames, into) => {
        if (!cut) {
          // b's fault service evicts a's frames (their pages moving home, locked): cut a meanwhile,
          // then let the copy home fail, so the eviction puts the entries back.
          cut = how === 'punch' ? a.punchHole(0, 4 * PS) : a.truncate(0);
          await tick(30);
          const inject = new FaultInjector();
          inject.failNext('copy-from-device');
          dm.inject = inject;
        }
        return copyFromFrames(frames, into);
      };
      await b.deviceRead(0, 4 * PS).catch(() => {}); // may fail: a's frames could not be had
      await cut;
      dm.copyFromFrames = copyFromFrames;
      dm.inject = new FaultInjector();
      expect(cut).toBeDefined();
      await checkInvariants(l.fs);
      if (how === 'truncate') await a.truncate(4 * PS);
      expectBytes(await a.read(0, 4 * PS), new Uint8Array(4 * PS), `a after the ${how}: zeros`);
      await a.deviceRead(0, 4 * PS);
    } finally {
      await l.cleanup();
    }
  },
);

it('a pin taken by the new owner of a frame survives the old owner unpinning it', async () => {
  const dm = await DeviceMemory.create(gpu, { devicePages: 1, pageSize: PS });
  try {
    const pool = dm.pool;
    const [f] = pool.takeFree([{ space: 1, index: 0 }]);
    pool.list(f);
    pool.pin(f); // fault service pins the frame of a page of its batch
    pool.release(f); // a CPU path revokes the page and frees the frame meanwhile
    const [g] = pool.takeFree([{ space: 2, index: 0 }]);
    expect(g).toBe(f);
    pool.list(g);
    pool.pin(g); // the new owner pins it (a pull back, a writeback, a bounce)
    pool.unpin(f); // fault service's finally
    expect(pool.victims(1)).toEqual([]);
    pool.unpin(g);
    expect(pool.victims(1)).toEqual([g]);
  } finally {
    dm.destroy();
  }
});
