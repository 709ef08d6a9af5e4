/**
 * fsx-style property test with device ops (issue 4): random op logs with devread/devwrite among the
 * CPU ops, under each device policy (mirror, migrate) and page sizes 4 KiB and 64 KiB, host budgets
 * of 4-8 pages and device budgets of 4-16 pages over files of up to 24 pages, so host reclaim and
 * device eviction both run (the counters must show both: under mirror reclaim leaves device
 * entries; under migrate the pages left for the device at once, and eviction brings them home). Every read is checked against the
 * reference model after its op and checkInvariants runs after every op (replay's afterOp hook), the
 * disk is compared after every fsync and remount and after the final unmount: replayOplog's check
 * mode, as `hmmlab replay --check --policy NAME` runs it. A log from generateOplog is replayed too.
 *
 * The seed is printed; HMMLAB_FSX_SEED=<seed> reruns it, HMMLAB_FSX_RUNS=<n> logs per policy and
 * page size.
 * A failure shrinks the log, saves it under os.tmpdir() and prints the replay command.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { DeviceMemory } from '../../src/device/index.ts';
import type { GpuDevice } from '../../src/gpu/device.ts';
import { generateOplog } from '../../src/oplog/generate.ts';
import { replayOplog } from '../../src/oplog/replay.ts';
import { type Op, serializeOplog } from '../../src/oplog/schema.ts';
import { checkInvariants } from '../../src/policy/invariants.ts';
import { createDevicePolicy } from '../../src/policy/registry.ts';
import { finishOplog, opArbitrary } from '../oplog/arbitrary.ts';
import { type DevicePolicyName, MATRIX, openGpu } from './helpers.ts';

const SEED = process.env.HMMLAB_FSX_SEED ? Number(process.env.HMMLAB_FSX_SEED) : Date.now() % 0x7fffffff;
const RUNS = Number(process.env.HMMLAB_FSX_RUNS ?? 25);
const MAX_OPS = 200;
const FILE_PAGES = 24;

interface FsxCase {
  hostPages: number;
  devicePages: number;
  ops: Op[];
}

async function saveFailure(c: FsxCase, policy: DevicePolicyName, pageSize: number): Promise<string> {
  const dir = join(tmpdir(), 'hmmlab-fsx-failures');
  await mkdir(dir, { recursive: true });
  const path = join(
    dir,
    `fsx-device-${policy}-seed${SEED}-page${pageSize}-host${c.hostPages}-dev${c.devicePages}.jsonl`,
  );
  await writeFile(path, serializeOplog(c.ops));
  return path;
}

/**
 * The fsx mix (test/oplog/arbitrary.ts, device ops included) plus wide device ops of 1-8 pages, so
 * the device holds more pages than its budget and device eviction runs, not only host reclaim.
 */
function deviceHeavyOplog(pageSize: number): fc.Arbitrary<Op[]> {
  const maxFileSize = FILE_PAGES * pageSize;
  const wide = fc
    .record({
      page: fc.integer({ min: 0, max: FILE_PAGES - 1 }),
      pages: fc.integer({ min: 1, max: 8 }),
      skew: fc.constantFrom(0, 4, pageSize / 2),
      write: fc.boolean(),
    })
    .map(({ page, pages, skew, write }): Op => {
      const off = page * pageSize + skew;
      const len = pages * pageSize - skew;
      return write ? { op: 'devwrite', off, len, tag: 0 } : { op: 'devread', off, len };
    });
  const op = fc.oneof(
    { weight: 4, arbitrary: opArbitrary({ pageSize, maxFileSize, device: true }) },
    { weight: 1, arbitrary: wide },
  );
  return fc.array(op, { minLength: 1, maxLength: MAX_OPS, size: 'max' }).map(finishOplog);
}

let gpu: GpuDevice;
beforeAll(async () => {
  gpu = await openGpu();
});
afterAll(() => {
  if (!gpu.lost) gpu.destroy();
});

describe.each(MATRIX)('fsx with device ops on a %s mount, page size %i', (policy, pageSize) => {
  test('random op logs match the reference model, invariants hold after every op', async () => {
    console.log(
      `fsx-device ${policy} page size ${pageSize}: seed ${SEED} (HMMLAB_FSX_SEED=${SEED} reruns it)`,
    );
    const arb = fc.record({
      hostPages: fc.integer({ min: 4, max: 8 }),
      devicePages: fc.integer({ min: 4, max: 16 }),
      ops: deviceHeavyOplog(pageSize),
    });
    const total = {
      ops: 0,
      deviceOps: 0,
      reads: 0,
      diskChecks: 0,
      reclaimed: 0,
      deviceEntries: 0,
      deviceEvictions: 0,
    };
    let invariantChecks = 0;
    const details = await fc.check(
      fc.asyncProperty(arb, async (c) => {
        const dm = await DeviceMemory.create(gpu, { devicePages: c.devicePages, pageSize });
        try {
          const r = await replayOplog(c.ops, {
            pageSize,
            hostPages: c.hostPages,
            policy: createDevicePolicy(policy, dm),
            check: true,
            afterOp: async (fs) => {
              await checkInvariants(fs);
              invariantChecks++;
            },
          });
          total.ops += r.ops;
          total.deviceOps += c.ops.filter((o) => o.op === 'devread' || o.op === 'devwrite').length;
          total.reads += r.reads.length;
          total.diskChecks += r.diskChecks;
          total.reclaimed += r.vmstat.pgsteal_direct ?? 0;
          total.deviceEntries +=
            (r.vmstat.workingset_device_entry ?? 0) + (r.vmstat.device_migrations_to_device ?? 0);
          total.deviceEvictions += dm.counters.evictions;
        } finally {
          dm.destroy();
        }
      }),
      { seed: SEED, numRuns: RUNS },
    );
    if (details.failed) {
      const c = details.counterexample![0];
      const path = await saveFailure(c, policy, pageSize);
      const message =
        `fsx-device failed: policy ${policy}, page size ${pageSize}, seed ${SEED}, path ${details.counterexamplePath}, ` +
        `${details.numShrinks} shrinks\n${String(details.errorInstance)}\n` +
        `shrunk log (${c.ops.length} ops, host pages ${c.hostPages}, device pages ${c.devicePages}) saved as ${path}\n` +
        `reproduce: node bin/hmmlab.mjs replay ${path} --check --policy ${policy} --page-size ${pageSize} ` +
        `--host-pages ${c.hostPages} --device-pages ${c.devicePages}\n` +
        `rerun: HMMLAB_FSX_SEED=${SEED} npx vitest run test/policy/fsx-device.test.ts`;
      console.error(message);
      throw new Error(message);
    }
    console.log(`fsx-device ${policy} page size ${pageSize}: ${JSON.stringify(total)}`);
    expect(total.deviceOps).toBeGreaterThan(RUNS);
    expect(invariantChecks).toBeGreaterThanOrEqual(total.ops);
    expect(total.diskChecks).toBeGreaterThanOrEqual(RUNS); // at least the end of each log
    expect(total.reclaimed).toBeGreaterThan(0); // host reclaim ran
    // mirror: reclaim left device entries; migrate: pages left for the device in fault service.
    expect(total.deviceEntries).toBeGreaterThan(0);
    expect(total.deviceEvictions).toBeGreaterThan(0); // device eviction ran
  }, 600_000);

  test('a generated log with device ops replays through replay.ts, checked', async () => {
    const seed = SEED ^ pageSize;
    const hostPages = 6;
    const devicePages = 8;
    const ops = generateOplog({
      seed,
      ops: 1000,
      device: true,
      pageSize,
      maxFileSize: FILE_PAGES * pageSize,
    });
    const dm = await DeviceMemory.create(gpu, { devicePages, pageSize });
    try {
      const r = await replayOplog(ops, {
        pageSize,
        hostPages,
        check: true,
        policy: createDevicePolicy(policy, dm),
        afterOp: (fs) => checkInvariants(fs),
      }).catch(async (e) => {
        const path = await saveFailure({ hostPages, devicePages, ops }, policy, pageSize);
        throw new Error(
          `${(e as Error).message}\nlog (generateOplog seed ${seed}) saved as ${path}\n` +
            `reproduce: node bin/hmmlab.mjs replay ${path} --check --policy ${policy} --page-size ${pageSize} ` +
            `--host-pages ${hostPages} --device-pages ${devicePages}`,
          { cause: e },
        );
      });
      expect(r.ops).toBe(1000);
      expect(r.reads.some((x) => x.op === 'devread')).toBe(true);
      expect(r.diskChecks).toBeGreaterThanOrEqual(1);
      expect(dm.counters.faultsUnique).toBeGreaterThan(0);
    } finally {
      dm.destroy();
    }
  }, 300_000);
});
