/**
 * Two mounts on one device memory, each under its own mutex: while one mount's policy awaits the
 * GPU in the middle of a copy-back or a bounce (its frame read before the await, used after it),
 * the other mount's fault service must not evict that frame from under it. Every policy, on the
 * real adapter: one frame for both mounts, so the second mount's fault can only be served by
 * evicting the first's, which it must do only once the first is done with it.
 */
import { afterAll, afterEach, beforeAll, describe, it } from 'vitest';
import { DeviceMemory } from '../../src/device/index.ts';
import type { GpuDevice } from '../../src/gpu/device.ts';
import { checkInvariants } from '../../src/policy/invariants.ts';
import { DEVICE_POLICY_NAMES } from '../../src/policy/registry.ts';
import { type DeviceLab, expectBytes, mountDevice, openGpu, pattern } from './helpers.ts';

const P = 4096;
let gpu: GpuDevice;
beforeAll(async () => {
  gpu = await openGpu();
});
afterAll(() => gpu?.destroy());

const labs: DeviceLab[] = [];
let dm: DeviceMemory | null = null;
afterEach(async () => {
  for (const l of labs.splice(0)) await l.cleanup();
  dm?.destroy();
  dm = null;
});

/**
 * Run `op` on mount B; the first time B's policy copies frames back (its await on the GPU), start
 * `other` on mount A without waiting for it. Both finish; `other`'s result is returned.
 */
async function interleave<T>(
  memory: DeviceMemory,
  op: () => Promise<unknown>,
  other: () => Promise<T>,
): Promise<T> {
  const copyFromFrames = memory.copyFromFrames.bind(memory);
  let started: Promise<T> | null = null;
  memory.copyFromFrames = (frames) => {
    const r = copyFromFrames(frames);
    started ??= other(); // A's op runs while B's copy is in flight
    return r;
  };
  try {
    await op();
  } finally {
    memory.copyFromFrames = copyFromFrames;
  }
  return started ? await started : await other();
}

describe.each(DEVICE_POLICY_NAMES)('two mounts sharing one frame (%s)', (policy) => {
  it("a write(2) of B's device-held page lands, and A's device read then gets the frame", async () => {
    dm = await DeviceMemory.create(gpu, { devicePages: 1, pageSize: P });
    const a = await mountDevice(gpu, { policy, pageSize: P, hostPages: 8, devicePages: 1, dm });
    const b = await mountDevice(gpu, { policy, pageSize: P, hostPages: 8, devicePages: 1, dm });
    labs.push(a, b);
    const fa = await a.fs.open('a', { create: true });
    const fb = await b.fs.open('b', { create: true });
    await fa.write(0, pattern(0, P, 1));
    await fa.fsync();
    await fb.write(0, pattern(0, P, 2));
    await fb.fsync();
    await fb.deviceWrite(0, P, 4); // B's page 0 on the only frame, written by the device
    const aRead = await interleave(
      dm,
      () => fb.write(100, pattern(100, 10, 3)), // a partial write: B reads the frame first
      () => fa.deviceRead(0, P),
    );
    expectBytes(aRead, pattern(0, P, 1), "A's device read");
    const want = pattern(0, P, 4);
    want.set(pattern(100, 10, 3), 100);
    expectBytes(await fb.read(0, P), want, "B's page after its write");
    expectBytes(await fa.deviceRead(0, P), pattern(0, P, 1), "A's device page afterwards");
    await checkInvariants(a.fs);
    await checkInvariants(b.fs);
  });

  it("a read(2) of B's device-written page gets B's bytes while A's fault waits for the frame", async () => {
    dm = await DeviceMemory.create(gpu, { devicePages: 1, pageSize: P });
    const a = await mountDevice(gpu, { policy, pageSize: P, hostPages: 8, devicePages: 1, dm });
    const b = await mountDevice(gpu, { policy, pageSize: P, hostPages: 8, devicePages: 1, dm });
    labs.push(a, b);
    const fa = await a.fs.open('a', { create: true });
    const fb = await b.fs.open('b', { create: true });
    await fa.write(0, pattern(0, P, 1));
    await fb.write(0, pattern(0, P, 2));
    await fb.deviceWrite(0, P, 5);
    let bRead: Uint8Array | null = null;
    const aRead = await interleave(
      dm,
      async () => {
        bRead = await fb.read(0, P);
      },
      () => fa.deviceRead(0, P),
    );
    expectBytes(bRead!, pattern(0, P, 5), "B's read");
    expectBytes(aRead, pattern(0, P, 1), "A's device read");
    await fb.fsync();
    expectBytes(await fb.read(0, P), pattern(0, P, 5), "B's page after fsync");
    await checkInvariants(a.fs);
    await checkInvariants(b.fs);
  });
});
