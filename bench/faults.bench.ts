/**
 * Micro-benchmarks of device access by faults against a prefetch and against mapped pages, at 256
 * pages of 4 KiB (npm run bench). Each iteration is a whole sample: fresh device state, the access,
 * the data check. The side-by-side report, which times only the access, is `hmmlab bench faults`.
 */
import { afterAll, bench, describe } from 'vitest';
import { createFaultRig, planFaultRows, runFaultSample } from '../src/bench/faults.ts';
import { GpuDevice } from '../src/gpu/device.ts';

const PAGES = 256;
const gpu = await GpuDevice.open();
const rig = createFaultRig(gpu, PAGES, 4096);

afterAll(() => {
  gpu.destroy();
});

describe(`device access to ${PAGES} pages of 4 KiB`, () => {
  // The floor (mapped-write) is left out: its untimed prefetch would be timed here with it.
  for (const row of planFaultRows(PAGES, [1, 64]).filter((r) => r.mode !== 'mapped-write')) {
    bench(row.what, async () => {
      await runFaultSample(rig, row);
    });
  }
});
