/**
 * The comparison's workloads as micro-benchmarks (npm run bench): each iteration is a whole run of
 * one workload under one policy (a fresh mount and device memory, the data checked), at 64 pages
 * of 4 KiB. The side-by-side report with host pages and bytes copied is `hmmlab compare`.
 */
import { afterAll, bench, describe } from 'vitest';
import { COMPARE_POLICIES, runComparison, WORKLOADS, workload } from '../src/bench/compare.ts';
import { GpuDevice } from '../src/gpu/device.ts';

const o = { pages: 64, kernels: 4, pageSize: 4096 };
const gpu = await GpuDevice.open();

afterAll(() => {
  gpu.destroy();
});

for (const name of WORKLOADS) {
  describe(`${name}, ${o.pages} pages of 4 KiB`, () => {
    for (const policy of COMPARE_POLICIES) {
      bench(policy, async () => {
        await runComparison(gpu, workload(name, o), policy, o);
      });
    }
  });
}
