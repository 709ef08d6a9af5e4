/**
 * `hmmlab bench scale` on the real adapter, at small sizes and budgets: one size's ops are all
 * timed, their data checked, and their peak memory measured for real (VmHWM); sizes are clamped
 * to the machine; the report's growth figures; the command writes the JSON (machine, adapter,
 * settings) and the SVG, prints only JSON with --json, and refuses a size over the cap. How the
 * cost grows with the file is measured by the command itself, not here.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { peakRss, resetPeakRss } from '../../src/bench/rss.ts';
import {
  checkScaleSizes,
  costGrowth,
  DEFAULT_SCALE_SETTINGS,
  defaultScaleSizes,
  formatScaleTable,
  runScaleSize,
  SCALE_OPS,
  type ScaleSizeResult,
  scaleChartSpec,
} from '../../src/bench/scale.ts';
import { GpuDevice } from '../../src/gpu/device.ts';
import { renderSvg } from '../../src/plot/svg.ts';
import { hmmlab, ourStderr } from '../helpers/cli.ts';

const MiB = 1 << 20;
const dir = mkdtempSync(join(tmpdir(), 'hmmlab-bench-scale-'));
const small = { ...DEFAULT_SCALE_SETTINGS, hostPages: 32, devicePages: 32, chunkBytes: 64 * 1024 };

let gpu: GpuDevice;
beforeAll(async () => {
  gpu = await GpuDevice.open();
});
afterAll(() => {
  gpu?.destroy();
  rmSync(dir, { recursive: true, force: true });
});

describe('bench scale: one size', () => {
  it('times every op over the whole file, checks the data, and measures its peak memory', async () => {
    const seen: string[] = [];
    const r = await runScaleSize(gpu, 2 * MiB, small, dir, (row) => seen.push(row.op));
    expect(seen).toEqual([...SCALE_OPS]);
    expect(r.verified).toBe(true);
    for (const row of r.rows) {
      expect(row.pages, row.op).toBe(512);
      expect(row.ms, row.op).toBeGreaterThan(0);
      expect(row.usPerPage).toBeCloseTo((row.ms * 1000) / 512, 6);
      expect(row.peakRss, row.op).toBeGreaterThan(r.baseRss / 2);
    }
    // Reclaim wrote back most of the write; the fsyncs write back what the budgets held dirty.
    const fsyncs = r.rows.filter((x) => x.op.startsWith('fsync'));
    for (const f of fsyncs) expect(f.written).toBeLessThanOrEqual(small.hostPages + small.devicePages);
    expect(r.peakRss).toBe(Math.max(...r.rows.map((x) => x.peakRss)));
    expect(existsSync(join(dir, 'scale.dat'))).toBe(false);
  });

  it('the peak resident memory is real: it sees an allocation, and a reset forgets it', () => {
    resetPeakRss();
    const before = peakRss();
    const big = Buffer.alloc(64 * MiB, 1);
    expect(peakRss() - before).toBeGreaterThan(60 * MiB);
    big.fill(2);
    expect(resetPeakRss()).toBe(true); // Linux: /proc/self/clear_refs
  });
});

describe('bench scale: sizes and report', () => {
  it('clamps the default sweep to the cap, and to 4 GiB on a software adapter', () => {
    expect(defaultScaleSizes(2 ** 40, true, 4096).at(-1)).toBe(4 * 2 ** 30);
    expect(defaultScaleSizes(2 ** 40, false, 4096).at(-1)).toBe(64 * 2 ** 30);
    expect(defaultScaleSizes(300 * MiB, false, 4096)).toEqual([16 * MiB, 64 * MiB, 256 * MiB]);
    expect(() => defaultScaleSizes(MiB, true, 4096)).toThrow(/ELIMIT|not even/);
    expect(() => checkScaleSizes([MiB + 1], 2 ** 40, 4096)).toThrow(/whole number of 4096-byte pages/);
    expect(() => checkScaleSizes([2 * MiB], MiB, 4096)).toThrow(/over this machine's limit/);
  });

  it('reports growth per op as the last size over the first, and renders a table and a chart', async () => {
    const fake = (size: number, us: number, rss: number): ScaleSizeResult => ({
      size,
      baseRss: 100 * MiB,
      peakRss: rss,
      verified: true,
      rows: SCALE_OPS.map((op) => ({
        size,
        op,
        pages: size / 4096,
        ms: 1,
        usPerPage: us,
        cpuMs: 1,
        cpuUsPerPage: 2 * us,
        sysMs: 0,
        written: 0,
        gbps: 1,
        peakRss: rss,
      })),
    });
    const results = [
      fake(16 * MiB, 10, 300 * MiB),
      fake(64 * MiB, 12, 330 * MiB),
      fake(256 * MiB, 11, 310 * MiB),
    ];
    const g = costGrowth(results);
    expect(g.last.usPerPage.devread).toBeCloseTo(1.1);
    expect(g.spread.cpuUsPerPage.write).toBeCloseTo(1.2);
    expect(g.peakRss.last).toBeCloseTo(310 / 300);
    const table = formatScaleTable(results);
    expect(table.split('\n')[0]).toMatch(/^size\s+pages\s+write us\/pg .* peak RSS MiB\s+base MiB$/);
    expect(table).toMatch(/^256 MiB\s+65536\s+11\.0/m);
    expect(await renderSvg(scaleChartSpec(results, 't'))).toMatch(/^<svg/);
  });
});

describe('hmmlab bench scale', () => {
  it('writes the JSON (machine, adapter, settings) and the SVG, and prints only JSON with --json', async () => {
    const out = join(dir, 'results');
    const args = 'bench scale --sizes 1M,2M --host-pages 32 --device-pages 32 --chunk 64K --json';
    const r = await hmmlab([...args.split(' '), '--dir', dir, '--out', out]);
    expect(ourStderr(r.stderr)).toEqual([]);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(Object.keys(report)).toEqual(
      expect.arrayContaining(['machine', 'adapter', 'settings', 'results', 'growth']),
    );
    expect(report.settings).toMatchObject({
      hostPages: 32,
      devicePages: 32,
      chunkBytes: 65536,
      sizes: [MiB, 2 * MiB],
    });
    expect(report.results.map((x: ScaleSizeResult) => x.rows.length)).toEqual([6, 6]);
    const files = readdirSync(out).sort();
    expect(files).toEqual([
      expect.stringMatching(/^scale-.*\.json$/),
      expect.stringMatching(/^scale-.*\.svg$/),
    ]);
    expect(JSON.parse(readFileSync(join(out, files[0]), 'utf8')).results.length).toBe(2);
    expect(readFileSync(join(out, files[1]), 'utf8')).toMatch(/^<svg/);
  });

  it('refuses a size over the free disk or the device, naming the limit (ELIMIT, exit 2: a bad value)', async () => {
    const r = await hmmlab(['bench', 'scale', '--sizes', '16T', '--dir', dir]);
    expect(r.code).toBe(2);
    expect(ourStderr(r.stderr)).toEqual([
      expect.stringMatching(/^hmmlab: ELIMIT: bench scale: size 16 TiB is over/),
    ]);
  });
});
