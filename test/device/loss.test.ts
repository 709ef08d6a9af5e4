/**
 * Device loss: a GPUDevice lost while a kernel runs (the device-lost injection point destroys it at a
 * launch), during a copy back, or while the device holds pages gives a
 * clear HmmlabError naming the pages whose device-written data was lost (EIO), or EGPU when it held
 * nothing dirty, and never hangs (every wait on the GPU has a timeout).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { DeviceMemory } from '../../src/device/index.ts';
import { GpuDevice } from '../../src/gpu/device.ts';
import { FaultInjector } from '../../src/inject/inject.ts';
import { rejection } from '../helpers/rejection.ts';
import { HostBacking } from './backing.ts';

const opened: GpuDevice[] = [];
afterEach(() => {
  for (const g of opened.splice(0)) if (!g.lost) g.destroy();
});

async function setup(pageSize: number) {
  const gpu = await GpuDevice.open();
  opened.push(gpu);
  gpu.timeoutMs = 5_000; // a hang would fail the test, not stall it
  const dm = await DeviceMemory.create(gpu, { devicePages: 64, pageSize });
  return { gpu, dm, hb: new HostBacking(dm, pageSize) };
}

describe.each([4096, 65536])('device loss, page size %i', (pageSize) => {
  it('lost during a kernel run (at its replay launch): EIO naming the dirty and the writable pages, no hang', async () => {
    const { dm, hb } = await setup(pageSize);
    const space = dm.space(1);
    await dm.runKernel('devwrite', space, { off: 0, len: 4 * pageSize, tag: 1 }, hb.servicer);
    // The second kernel's first launch faults on pages 8-39, their service maps them writable, and
    // the device is destroyed at the launch that replays the work.
    dm.inject = new FaultInjector();
    dm.inject.failNext('device-lost', 1);
    const t0 = Date.now();
    const e = await rejection(
      dm.runKernel('devwrite', space, { off: 8 * pageSize, len: 32 * pageSize, tag: 2 }, hb.servicer),
    );
    expect(dm.inject.fired['device-lost']).toBe(1);
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(e.code).toBe('EIO');
    expect(e.message).toMatch(/GPU device lost/);
    expect(e.message).toMatch(/space 1 pages 0-3 \(written by the device\)/);
    expect(e.message).toMatch(/space 1 pages 8-39 \(device-writable, possibly written\)/);
  });

  it('lost during a copy back to the host: EIO naming the pages the device wrote', async () => {
    const { gpu, dm, hb } = await setup(pageSize);
    const space = dm.space(4);
    await dm.runKernel('devwrite', space, { off: 0, len: 2 * pageSize, tag: 5 }, hb.servicer);
    await dm.runKernel('devread', space, { off: 3 * pageSize, len: pageSize }, hb.servicer);
    dm.inject = new FaultInjector({ onFire: () => gpu.destroy() }); // the loss comes mid-copy
    dm.inject.failNext('copy-from-device');
    const e = await rejection(dm.copyFromFrames([space.entries.get(0)!.frame, space.entries.get(1)!.frame]));
    expect(e.code).toBe('EIO');
    expect(e.message).toMatch(/space 4 pages 0-1 \(written by the device\)/);
    expect(e.message).not.toMatch(/\b3\b/);
  });

  it('destroy() while the device holds dirty pages: the next use fails with EIO naming them', async () => {
    const { gpu, dm, hb } = await setup(pageSize);
    const space = dm.space(2);
    await dm.runKernel('devwrite', space, { off: pageSize, len: 2 * pageSize, tag: 3 }, hb.servicer);
    await dm.runKernel('devread', space, { off: 5 * pageSize, len: pageSize }, hb.servicer);
    gpu.destroy();
    const e = await rejection(dm.copyFromFrames([space.entries.get(1)!.frame]));
    expect(e.code).toBe('EIO');
    expect(e.message).toMatch(/pages 1-2 \(written by the device\)/);
    expect(e.message).not.toMatch(/\b5\b.*written/);
    const again = await rejection(dm.runKernel('devread', space, { off: 0, len: 4 }, hb.servicer));
    expect(again.code).toBe('EIO');
  });

  it('a device that held nothing dirty is lost with EGPU', async () => {
    const { gpu, dm, hb } = await setup(pageSize);
    await dm.runKernel('devread', dm.space(3), { off: 0, len: pageSize }, hb.servicer);
    gpu.destroy();
    const e = await rejection(dm.snapshot(dm.space(3), 0, 0));
    expect(e.code).toBe('EGPU');
    expect(e.message).toMatch(/held no dirty pages/);
  });
});
