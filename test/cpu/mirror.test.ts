/**
 * CPU workers under Jan Kara's mirror scheme on the real adapter: a worker's mmap load of pages the
 * device wrote faults, and the fault (filemap_fault in the owner) copies A' back; a worker's store
 * revokes the device's copy; device threads then read what the worker stored. The invariants hold
 * after each step.
 */
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { HmmFsCpuOwner } from '../../src/cpu/hmmfsOwner.ts';
import { CpuThreads } from '../../src/cpu/threads.ts';
import type { GpuDevice } from '../../src/gpu/device.ts';
import { checkInvariants } from '../../src/policy/invariants.ts';
import { expectBytes, type MirrorLab, mountMirror, openGpu, pattern } from '../policy/helpers.ts';

const PS = 4096;
let gpu: GpuDevice;
beforeAll(async () => {
  gpu = await openGpu();
});
afterAll(() => gpu?.destroy());

let lab: MirrorLab | undefined;
let threads: CpuThreads | undefined;
afterEach(async () => {
  await threads?.close();
  await lab?.cleanup();
  threads = lab = undefined;
});

it('a worker loads device-written pages through a fault, and its store revokes the device copy', async () => {
  lab = await mountMirror(gpu, { pageSize: PS, hostPages: 64, devicePages: 64 });
  threads = await CpuThreads.start(new HmmFsCpuOwner(lab.fs), { threads: 1 });
  const w = threads.worker(0).api;
  const fd = await w.open('g', true);
  await w.write(fd, 0, pattern(0, 8 * PS, 1));
  const f = await lab.fs.open('g');
  await f.deviceWrite(0, 8 * PS, 2);
  expect(lab.fs.snapshot('g', 0, 0)[0]).toMatchObject({ host: 'S', dev: 'rw', cpu: '-' });

  const v = await w.mmap(fd);
  expectBytes(await w.load(v, 0, 8 * PS), pattern(0, 8 * PS, 2), 'worker load of device-written pages');
  expect(lab.fs.snapshot('g', 0, 0)[0]).toMatchObject({ host: 'D', dev: 'ro', cpu: 'ro' });
  await checkInvariants(lab.fs);

  const mine = pattern(0, PS, 3);
  await w.store(v, 0, mine);
  expect(lab.fs.snapshot('g', 0, 0)[0]).toMatchObject({ host: 'D', dev: '-', cpu: 'rw' });
  await checkInvariants(lab.fs);
  expectBytes(await f.deviceRead(0, PS), mine, 'device read of the page the worker stored');
  // 8 read faults (fault-around skips pages whose data is on the device), then 1 write fault.
  expect(threads.worker(0).faults).toBe(9);
  await checkInvariants(lab.fs);
});
