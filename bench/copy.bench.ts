/**
 * Micro-benchmarks of the copy paths at one page-cache-sized size (npm run bench). The full sweep
 * over sizes, nvbandwidth-style, is `hmmlab bench copy`.
 */
import { afterAll, bench, describe } from 'vitest';
import { fillRandom } from '../src/bench/random.ts';
import {
  copyDevice,
  copyHost,
  createDeviceBuffer,
  ReadbackRing,
  StagingRing,
  writeDevice,
} from '../src/gpu/copy.ts';
import { GpuDevice } from '../src/gpu/device.ts';

const N = 1 << 20;
const gpu = await GpuDevice.open();
const src = fillRandom(new Uint8Array(N), 1);
const shared = new Uint8Array(new SharedArrayBuffer(N));
shared.set(src);
const dst = new Uint8Array(N);
const a = createDeviceBuffer(gpu, 'bench-a', N);
const w = createDeviceBuffer(gpu, 'bench-w', N);
const b = createDeviceBuffer(gpu, 'bench-b', N);
const staging = new StagingRing(gpu);
const readback = new ReadbackRing(gpu);
writeDevice(gpu, a, 0, src);
await gpu.drain();

afterAll(() => {
  staging.destroy();
  readback.destroy();
  for (const buf of [a, w, b]) buf.destroy();
  gpu.destroy();
});

describe('copy 1 MiB', () => {
  bench('h2d writeBuffer', async () => {
    writeDevice(gpu, w, 0, src);
    await gpu.drain();
  });
  bench('h2d writeBuffer from shared memory', async () => {
    writeDevice(gpu, w, 0, shared);
    await gpu.drain();
  });
  bench('h2d staging ring', async () => {
    await staging.write(b, 0, src);
    await gpu.drain();
  });
  bench('d2h readback ring', async () => {
    await readback.read(a, 0, N, dst);
  });
  bench('d2d copyBufferToBuffer', async () => {
    copyDevice(gpu, a, 0, b, 0, N);
    await gpu.drain();
  });
  bench('host memcpy', () => {
    copyHost(dst, src);
  });
});
