/**
 * A grant that fault service committed but has not installed yet (space.pending) is what a CPU
 * path's invalidation must find, whichever entry point it takes: pull (the one-submit copy back)
 * with nothing installed and nothing to copy still write-protects or takes back the grant and bumps
 * the mmu_interval sequence, as protect() and revoke() do. Without it the install that follows put
 * a frame the policy had freed into the page table (stress --concurrent found it).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceMemory } from '../../src/device/index.ts';
import type { GpuDevice } from '../../src/gpu/device.ts';
import { openGpu } from '../policy/helpers.ts';

let gpu: GpuDevice;
beforeAll(async () => {
  gpu = await openGpu();
});
afterAll(() => gpu?.destroy());

describe('pull of pages whose grant is pending', () => {
  it.each(['protect', 'revoke', 'dm.protect', 'dm.revoke'] as const)(
    '%s: the pending grant is invalidated and the race is seen',
    async (how) => {
      const dm = await DeviceMemory.create(gpu, { devicePages: 4, pageSize: 4096 });
      try {
        const space = dm.space(1);
        const [frame] = await dm.allocFrames(space, [3]);
        expect(frame).not.toBeNull();
        const seq = space.readBegin();
        space.pending.set(3, { frame: frame!, perm: 'rw' });
        if (how === 'protect') await dm.pull(space, { protect: [3] });
        else if (how === 'revoke') await dm.pull(space, { revoke: [3] });
        else if (how === 'dm.protect') await dm.protect(space, [3], { cleanDirty: true });
        else await dm.revoke(space, [3]);
        expect(space.readRetry(seq, [3]).has(3)).toBe(true);
        if (how.endsWith('protect')) expect(space.pending.get(3)).toEqual({ frame, perm: 'ro' });
        else expect(space.pending.has(3)).toBe(false);
        expect(space.entries.has(3)).toBe(false);
      } finally {
        dm.destroy();
      }
    },
  );
});
