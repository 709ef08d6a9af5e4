/**
 * Micro-benchmarks of device access by faults against a prefetch, at 256 cached pages of 4 KiB under
 * each policy (npm run bench). Each iteration is a whole sample: a fresh mount, the access, the data
 * check. The side-by-side report, which times only the access, is `hmmlab bench faults`.
 */
import { afterAll, bench, describe } from 'vitest';
import { createFaultRig, planFaultRows, rowDevice, runFaultSample } from '../src/bench/faults.ts';
import { GpuDevice } from '../src/gpu/device.ts';

const PAGES = 256;
const gpu = await GpuDevice.open();
const rig = await createFaultRig(gpu, PAGES, 4096);

afterAll(() => {
  rig.close();
  gpu.destroy();
});

describe(`device access to ${PAGES} pages of 4 KiB`, () => {
  // The floor (mapped-write) is left out: its untimed prefetch would be timed here with it.
  const rows = planFaultRows(PAGES, [1, 64], 1, { replayPolicies: ['once', 'batch-flush'] });
  for (const row of rows.filter((r) => r.mode !== 'mapped-write')) {
    bench(row.what, async () => {
      const dm = await rowDevice(rig, row);
      try {
        const s = await runFaultSample(rig, row, dm);
        if (!s.verified) throw new Error(`${row.what}: the data does not match`);
      } finally {
        dm.destroy();
      }
    });
  }
});
