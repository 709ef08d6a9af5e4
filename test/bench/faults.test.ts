/**
 * `hmmlab bench faults` on the real adapter: a small run returns every row with its faults counted
 * exactly (every page faults once in the fault-driven rows, never in the mapped ones), fault batches
 * equal ceil(unique / batch) per kernel, thrashing re-faults and evicts what LRU order says, and the
 * data of every sample is checked; the options parse strictly; the command prints only JSON with
 * --json and exits 2 naming a bad --batch.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  benchFaults,
  checkFileBytes,
  choosePages,
  DEFAULT_FAULT_PAGES,
  expectedBatches,
  FAULT_MODES,
  type FaultBenchRow,
  faultChartSpec,
  parseBatchList,
  parseFaultBenchArgs,
  planFaultRows,
  streamSlices,
} from '../../src/bench/faults.ts';
import { REPLAY_POLICIES } from '../../src/device/index.ts';
import type { HmmlabError } from '../../src/errors.ts';
import { GpuDevice } from '../../src/gpu/device.ts';
import { renderSvg } from '../../src/plot/svg.ts';
import { DEVICE_POLICY_NAMES } from '../../src/policy/registry.ts';
import { hmmlab } from '../helpers/cli.ts';

const dir = mkdtempSync(join(tmpdir(), 'hmmlab-bench-faults-'));

let gpu: GpuDevice;
beforeAll(async () => {
  gpu = await GpuDevice.open();
});
afterAll(() => {
  gpu?.destroy();
  rmSync(dir, { recursive: true, force: true });
});

function row(rows: FaultBenchRow[], what: string): FaultBenchRow {
  const r = rows.find((x) => x.what === what);
  expect(r, what).toBeDefined();
  return r!;
}

describe('bench faults: options and plan', () => {
  it('parses a batch list and refuses zero, words, fractions, empties and repeats by name', () => {
    expect(parseBatchList('1, 16,256')).toEqual([1, 16, 256]);
    for (const bad of ['0', '16,abc', '1.5', '16,,64', '', '-4', '16,16']) {
      expect(() => parseBatchList(bad), bad).toThrow(/--batch/);
    }
    expect(() => parseFaultBenchArgs({ threads: '0' })).toThrow(/--threads "0"/);
    expect(() => parseFaultBenchArgs({ pageSize: '3000' })).toThrow(/--page-size "3000"/);
    expect(parseFaultBenchArgs({ pageSize: '64K', pages: '12' })).toMatchObject({
      pageSize: 65536,
      pages: 12,
    });
  });

  it('clamps the default page count to the device and refuses an explicit one over it', () => {
    expect(choosePages(undefined, 4096, 1000)).toBe(1000);
    expect(choosePages(undefined, 4096, 1 << 20)).toBe(DEFAULT_FAULT_PAGES);
    expect(choosePages(7, 4096, 1000)).toBe(7);
    expect(() => choosePages(1001, 4096, 1000)).toThrow(/--pages 1001 .* limit of 1000 pages/);
  });

  it('slices the pages among kernels without gaps and counts their batches', () => {
    const s = streamSlices(200, 3);
    expect(s.map((x) => x.count)).toEqual([66, 67, 67]);
    s.forEach((x, i) => {
      expect(x.first).toBe(i === 0 ? 0 : s[i - 1].first + s[i - 1].count);
    });
    expect(expectedBatches(200, 3, 64, 200)).toBe(6);
    expect(expectedBatches(256, 1, 1024, 256)).toBe(1);
    // The device layer never hands out more faults at once than the pool has frames.
    expect(expectedBatches(256, 1, 256, 128)).toBe(2);
  });

  it('plans every mode, one sweep row per batch size, the thrash pool half the pages', () => {
    const plan = planFaultRows(100, [1, 7], 1, { largePages: 200 });
    expect(new Set(plan.map((r) => r.mode))).toEqual(new Set(FAULT_MODES));
    expect(plan.find((r) => r.mode === 'large-fault-write')!.pages).toBe(200);
    // No large rows unless they are larger than the run; every policy gets every row.
    expect(planFaultRows(100, [1], 1, { largePages: 100 }).some((r) => r.mode.startsWith('large-'))).toBe(
      false,
    );
    expect(planFaultRows(100, [1], 1, { policies: ['migrate'] }).every((r) => r.policy === 'migrate')).toBe(
      true,
    );
    expect(plan.filter((r) => r.mode === 'batch-write').map((r) => r.batchSize)).toEqual([1, 7, 1, 7]);
    expect(plan.find((r) => r.mode === 'thrash-write')!.devicePages).toBe(50);
    expect(planFaultRows(100, [1], 3).find((r) => r.mode === 'thrash-write')!.devicePages).toBe(17);
  });

  it('names the page where the data differs', () => {
    const want = new Uint8Array(3 * 4096).fill(9);
    const got = want.slice();
    checkFileBytes('x', got, want, 0, 4096);
    got[2 * 4096 + 5] = 1;
    expect(() => checkFileBytes('fault write', got, want, 4096, 4096)).toThrow(
      /fault write: data differs at file byte 12293 \(page 3\): got 1, expected 9/,
    );
    try {
      checkFileBytes('x', got, want, 0, 4096);
    } catch (e) {
      expect((e as HmmlabError).code).toBe('EIO');
    }
  });
});

describe('bench faults on the real adapter, under each policy', () => {
  const pages = 256;
  const ps = 4096;
  const words = pages * (ps / 4);
  const batches = [1, 16, 100, 1024];
  let rows: FaultBenchRow[];
  const progress: number[] = [];

  beforeAll(async () => {
    rows = await benchFaults(gpu, {
      pages,
      pageSize: ps,
      batches,
      iters: 2,
      largeBytes: 0,
      onProgress: (done) => progress.push(done),
    });
  });

  it('returns every row of both policies, each naming its policy, timed, with its data verified', () => {
    expect(rows.map((r) => r.what)).toEqual(planFaultRows(pages, batches).map((r) => r.what));
    expect(new Set(rows.map((r) => r.policy))).toEqual(new Set(DEVICE_POLICY_NAMES));
    for (const r of rows) {
      expect(r.what.startsWith(`${r.policy}: `), r.what).toBe(true);
      expect(r.samples, r.what).toBe(2);
      expect(r.min, r.what).toBeGreaterThan(0);
      expect(r.min, r.what).toBeLessThanOrEqual(r.ms);
      expect(r.ms, r.what).toBeLessThanOrEqual(r.max);
      expect(r.bytes).toBe(pages * ps);
      expect(r.pagesPerSec).toBeCloseTo(pages / (r.ms / 1000), 6);
      expect(r.verified, r.what).toBe(true);
    }
    for (const p of DEVICE_POLICY_NAMES) expect(row(rows, `${p}: prefetch + write`).vsPrefetch).toBe(1);
    // Progress: one call a sample (warm-up included), then done === total.
    expect(progress.at(-1)).toBe(rows.length * 3);
    expect(progress.length).toBe(rows.length * 3 + 1);
  });

  it('fault-driven rows fault every page once, coalesced from every word, in ceil(pages/batch) batches', () => {
    const faulting = rows.filter((r) =>
      ['fault-write', 'fault-read', 'batch-write', 'replay-write'].includes(r.mode),
    );
    expect(faulting.length).toBe(2 * (2 + batches.length + REPLAY_POLICIES.length));
    for (const r of faulting) {
      expect(r.faultsUnique, r.what).toBe(pages);
      expect(r.faultsRaw, r.what).toBe(words);
      expect(r.batches, r.what).toBe(Math.ceil(pages / Math.min(r.batchSize, pages)));
      expect(r.replays, r.what).toBe(1);
      expect(r.evictions, r.what).toBe(0);
      expect(r.bytesHostToDevice, r.what).toBe(pages * ps);
      // The breakdown: service time was spent, and per fault and per batch it is that time shared out.
      expect(r.serviceMs, r.what).toBeGreaterThan(0);
      expect(r.usPerFault, r.what).toBeCloseTo((r.serviceMs * 1000) / r.faultsUnique, 6);
      expect(r.msPerBatch, r.what).toBeCloseTo(r.serviceMs / r.batches, 6);
    }
    expect(row(rows, 'mirror: fault write, batch 1').batches).toBe(256);
    expect(row(rows, 'migrate: fault write, batch 100').batches).toBe(3);
  });

  it('prefetched and mapped rows take no fault', () => {
    for (const p of DEVICE_POLICY_NAMES) {
      for (const what of [`${p}: prefetch + write`, `${p}: prefetch + read`, `${p}: mapped write (floor)`]) {
        const r = row(rows, what);
        expect(r.faultsRaw, what).toBe(0);
        expect(r.faultsUnique, what).toBe(0);
        expect(r.batches, what).toBe(0);
        expect(r.replays, what).toBe(0);
        expect(r.launches, what).toBe(1);
      }
      // The prefetch's copy is timed with it; the floor's was done before the clock started.
      expect(row(rows, `${p}: prefetch + write`).bytesHostToDevice).toBe(pages * ps);
      expect(row(rows, `${p}: mapped write (floor)`).bytesHostToDevice).toBe(0);
    }
  });

  it('a pool of half the pages evicts and re-faults in LRU order: mirror copies back what the device wrote, migrate every page', () => {
    for (const p of DEVICE_POLICY_NAMES) {
      const r = rows.find((x) => x.policy === p && x.mode === 'thrash-write')!;
      expect(r.devicePages).toBe(pages / 2);
      // Launch 1: all pages fault; the second batch of 128 evicts the first (clean: nothing ran).
      // Launch 2: the mapped half is written, the first half faults again and evicts it (dirty).
      expect(r.faultsUnique, p).toBe(pages + pages / 2);
      expect(r.faultsRaw, p).toBe(words + words / 2);
      expect(r.evictions, p).toBe(pages);
      expect(r.evictionsDirty, p).toBe(pages / 2);
      expect(r.replays, p).toBe(2);
      expect(r.batches, p).toBe(3);
      expect(r.verified, p).toBe(true);
    }
    // Mirror's host page keeps the clean pages' bytes; migrate's pages moved, so every eviction copies.
    expect(row(rows, 'mirror: thrash write, pool 128').bytesDeviceToHost).toBe((pages / 2) * ps);
    expect(row(rows, 'migrate: thrash write, pool 128').bytesDeviceToHost).toBe(pages * ps);
  });

  it('the chart renders both panels', async () => {
    const svg = await renderSvg(faultChartSpec(rows, 'test'));
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg).toContain('fault batch size');
    expect(svg).toContain('mirror: mapped write (floor)');
  });

  it('kernels at once each fault their own slice, in ceil(slice/batch) batches each', async () => {
    const n = 200;
    const got = await benchFaults(gpu, {
      pages: n,
      pageSize: ps,
      batches: [64],
      threads: 3,
      iters: 1,
      policies: ['mirror'],
      replayPolicies: [],
      largeBytes: 0,
    });
    for (const r of got) expect(r.threads).toBe(3);
    const sweep = row(got, 'mirror: fault write, batch 64');
    expect(sweep.faultsUnique).toBe(n);
    expect(sweep.batches).toBe(expectedBatches(n, 3, 64, n));
    expect(sweep.replays).toBe(3); // one replay per kernel
    expect(row(got, 'mirror: mapped write (floor)').faultsUnique).toBe(0);
    expect(row(got, 'mirror: fault read').faultsUnique).toBe(n);
    // Thrashing runs the kernels in turn (inTurn) on a pool of half the largest slice (67): each
    // kernel re-faults its own pages, and evicts the pages the kernel before it wrote.
    const thrash = got.find((r) => r.mode === 'thrash-write')!;
    expect(thrash.what).toBe('mirror: thrash write, pool 33, kernels in turn');
    expect(thrash.faultsUnique).toBeGreaterThanOrEqual(n + 3 * 33);
    expect(thrash.replays).toBeGreaterThanOrEqual(3 * 2);
    expect(thrash.evictionsDirty).toBeGreaterThanOrEqual(n - 33);
    for (const r of got) expect(r.verified, r.what).toBe(true);
  });
});

describe('hmmlab bench faults (child process)', () => {
  it('--json prints only a JSON array of rows, and --svg writes the chart', async () => {
    const svg = join(dir, 'faults.svg');
    const r = await hmmlab([
      'bench',
      'faults',
      '--json',
      '--pages',
      '64',
      '--iters',
      '1',
      '--batch',
      '1,32',
      '--large',
      '0',
      '--out',
      dir,
      '--svg',
      svg,
    ]);
    expect(r.code, r.stderr).toBe(0);
    const rows = JSON.parse(r.stdout) as FaultBenchRow[];
    expect(Array.isArray(rows)).toBe(true);
    expect(rows.map((x) => x.mode)).toEqual(planFaultRows(64, [1, 32]).map((x) => x.mode));
    for (const x of rows) {
      expect(DEVICE_POLICY_NAMES).toContain(x.policy);
      expect(x.verified, x.what).toBe(true);
    }
    expect(row(rows, 'mirror: fault write, batch 32').batches).toBe(2);
    expect(row(rows, 'migrate: fault write').faultsUnique).toBe(64);
    // The report beside the chart: machine, adapter, settings, the rows and the targets.
    const report = JSON.parse(
      readFileSync(
        join(dir, readdirSync(dir).find((f) => f.startsWith('faults-') && f.endsWith('.json'))!),
        'utf8',
      ),
    );
    expect(report.machine.cores).toBeGreaterThan(0);
    expect(report.adapter).toBeDefined();
    expect(report.settings.pages).toBe(64);
    expect(report.rows.length).toBe(rows.length);
    for (const t of report.targets) expect(t.met).toBe(t.measured <= t.target);
    expect(readFileSync(svg, 'utf8').startsWith('<svg')).toBe(true);
  });

  it('a bad --batch exits 2 with a message naming it, before opening a device', async () => {
    const r = await hmmlab(['bench', 'faults', '--batch', '16,0']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/hmmlab: EINVAL: bad --batch "16,0": "0" is not a positive integer/);
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
  });
});
