/**
 * `hmmlab compare`: every workload under mirror, migrate and explicit, as a user runs it (--json,
 * the table, --svg), and the figures it reports checked against what each scheme must do on each
 * workload: the bytes copied are the pages moved times the page size, to the byte (counted
 * independently: the device layer's bytes, the policies' page counters), explicit faults nothing
 * and copies the dataset each way around every kernel, and on glisse-dataset migrate holds on
 * average at most a quarter of the host pages mirror holds. Correctness only: times are reported,
 * never asserted.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  COMPARE_POLICIES,
  type CompareRow,
  compare,
  runComparison,
  WORKLOADS,
  workload,
} from '../../src/bench/compare.ts';
import type { GpuDevice } from '../../src/gpu/device.ts';
import { hmmlab, ourStderr } from '../helpers/cli.ts';
import { openGpu } from '../policy/helpers.ts';

const P = 4096;

const row = (rows: CompareRow[], w: string, p: string) =>
  rows.find((r) => r.workload === w && r.policy === p)!;

describe('hmmlab compare --json', () => {
  let rows: CompareRow[];
  beforeAll(async () => {
    const r = await hmmlab(['compare', '--json'], { timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
    expect(ourStderr(r.stderr)).toEqual([]);
    rows = JSON.parse(r.stdout);
  }, 120_000);

  it('reports every workload under every policy, with the figures the issue names', () => {
    expect(rows.map((r) => `${r.workload}/${r.policy}`)).toEqual(
      WORKLOADS.flatMap((w) => COMPARE_POLICIES.map((p) => `${w}/${p}`)),
    );
    for (const r of rows) {
      for (const k of [
        'hostPagesPeak',
        'hostPagesAvg',
        'devicePagesPeak',
        'bytesH2D',
        'bytesD2H',
        'faults',
        'seconds',
      ])
        expect(typeof (r as unknown as Record<string, unknown>)[k], `${r.workload}/${r.policy} ${k}`).toBe(
          'number',
        );
    }
  });

  it('the bytes copied are the pages moved times the page size, to the byte', () => {
    for (const r of rows) {
      expect(r.bytesH2D, `${r.workload}/${r.policy}`).toBe(r.pagesH2D * r.pageSize);
      expect(r.bytesD2H, `${r.workload}/${r.policy}`).toBe(r.pagesD2H * r.pageSize);
    }
  });

  it('on glisse-dataset migrate holds on average at most a quarter of the host pages mirror holds', () => {
    const mirror = row(rows, 'glisse-dataset', 'mirror');
    const migrate = row(rows, 'glisse-dataset', 'migrate');
    expect(mirror.hostPagesAvg).toBeGreaterThan(0);
    expect(migrate.hostPagesAvg).toBeLessThanOrEqual(mirror.hostPagesAvg / 4);
  });
});

describe('compare, in process: what each scheme must do on each workload', () => {
  let gpu: GpuDevice;
  const o = { pages: 32, kernels: 4, pageSize: P };
  const D = o.pages;
  const K = o.kernels;
  let rows: CompareRow[];
  beforeAll(async () => {
    gpu = await openGpu();
    rows = await compare(gpu, WORKLOADS, o);
  }, 120_000);
  afterAll(() => {
    if (!gpu.lost) gpu.destroy();
  });

  it('glisse-dataset: mirror and migrate copy the dataset to the device once; explicit around every kernel', () => {
    for (const p of ['mirror', 'migrate']) {
      const r = row(rows, 'glisse-dataset', p);
      expect(r.pagesH2D, p).toBe(D);
      expect(r.pagesD2H, p).toBe(0);
      expect(r.faults, p).toBe(D);
      expect(r.devicePagesPeak, p).toBe(D);
    }
    const e = row(rows, 'glisse-dataset', 'explicit');
    expect(e.faults).toBe(0);
    expect(e.pagesH2D).toBe(K * D);
    expect(e.pagesD2H).toBe(K * D);
    // mirror keeps the page cache's copy; migrate frees it; explicit holds its buffer too
    expect(row(rows, 'glisse-dataset', 'mirror').hostPagesPeak).toBe(D);
    expect(e.hostPagesPeak).toBe(2 * D);
  });

  it('glisse-dataset-pressure: under mirror reclaim takes the dataset pages (their copies stay on the device)', () => {
    const mirror = row(rows, 'glisse-dataset-pressure', 'mirror');
    const migrate = row(rows, 'glisse-dataset-pressure', 'migrate');
    expect(mirror.reclaimed).toBeGreaterThanOrEqual(D);
    expect(migrate.reclaimed).toBe(0); // nothing of the dataset is left on the host to reclaim
    expect(mirror.pagesD2H).toBe(0); // Kara's device entries: nothing is copied back
  });

  it('read-mostly: migrate pays a bounce copy for every CPU read; mirror reads A', () => {
    const mirror = row(rows, 'read-mostly', 'mirror');
    const migrate = row(rows, 'read-mostly', 'migrate');
    expect(migrate.pagesD2H).toBeGreaterThanOrEqual(K * D);
    expect(mirror.pagesD2H).toBeLessThan(D);
  });

  it('stream-write: the device writes a new file; migrate holds no host page for it at the end', async () => {
    const r = await runComparison(gpu, workload('stream-write', o), 'migrate', o);
    expect(r.pagesH2D).toBe(D); // the pages of holes moved to the device
    expect(r.pagesD2H).toBe(D); // fsync: through a bounce page each
    expect(r.hostPagesAvg).toBeLessThan(D / 2);
  });
});

describe('the command line', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hmmlab-compare-test-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('one workload as a table and an SVG chart', async () => {
    const svg = path.join(dir, 'compare.svg');
    const r = await hmmlab([
      'compare',
      '--workload',
      'pingpong',
      '--pages',
      '16',
      '--kernels',
      '4',
      '--svg',
      svg,
    ]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.trimEnd().split('\n');
    expect(lines[1]).toMatch(
      /^workload +policy +host peak +host avg +dev peak +h2d KiB +d2h KiB +faults +batches/,
    );
    expect(lines.slice(2, 5).map((l) => l.split(/\s+/).slice(0, 2).join(' '))).toEqual([
      'pingpong mirror',
      'pingpong migrate',
      'pingpong explicit',
    ]);
    expect(lines.at(-1)).toBe(`chart written to ${svg}`);
    expect(fs.readFileSync(svg, 'utf8')).toMatch(/^<svg /);
  });

  it('an unknown workload is EINVAL naming them, before the GPU opens', async () => {
    const r = await hmmlab(['compare', '--workload', 'nope']);
    expect(r.code).toBe(2);
    expect(ourStderr(r.stderr).join('\n')).toBe(
      'hmmlab: EINVAL: bad --workload "nope": expected one of glisse-dataset, glisse-dataset-pressure, pingpong, read-mostly, stream-write, or all',
    );
  });
});
