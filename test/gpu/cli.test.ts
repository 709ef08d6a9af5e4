/**
 * The hmmlab command as a user runs it (child processes on the real adapter): info and bench copy
 * print valid JSON and nothing else on stdout; user errors are one line on stderr, no stack trace.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { COPY_PATHS, formatRate } from '../../src/bench/copy.ts';
import { hmmlab, ourStderr } from '../helpers/cli.ts';

const dir = mkdtempSync(join(tmpdir(), 'hmmlab-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('hmmlab CLI', () => {
  it('info --json prints one JSON object naming the adapter', async () => {
    const r = await hmmlab(['info', '--json']);
    expect(r.code).toBe(0);
    const info = JSON.parse(r.stdout);
    expect(typeof info.vendor).toBe('string');
    expect(`${info.description}${info.device}`).not.toBe('');
    expect(typeof info.software).toBe('boolean');
    expect(info.limits.maxBufferSize).toBeGreaterThan(0);
  });

  it('bench copy --json prints rows for every path and size, and the chart', async () => {
    const svg = join(dir, 'copy.svg');
    const r = await hmmlab([
      'bench',
      'copy',
      '--json',
      '--sizes',
      '1048576,16777216',
      '--iters',
      '2',
      '--out',
      dir,
      '--svg',
      svg,
    ]);
    expect(r.code, r.stderr).toBe(0);
    const rows = JSON.parse(r.stdout) as { path: string; bytes: number; gbps: number; samples: number }[];
    for (const path of COPY_PATHS) {
      for (const bytes of [1048576, 16777216]) {
        const row = rows.find((x) => x.path === path && x.bytes === bytes);
        expect(row, `${path} ${bytes}`).toBeDefined();
        expect(row!.gbps).toBeGreaterThan(0);
        expect(row!.samples).toBe(2);
      }
    }
    const chart = readFileSync(svg, 'utf8');
    expect(chart.startsWith('<svg')).toBe(true);
    for (const path of COPY_PATHS) expect(chart).toContain(path);
  });

  it('bench copy --managed --json adds managed rows per page size and policy, each with its ratio over the raw path of its direction', async () => {
    const out = join(dir, 'managed');
    const r = await hmmlab([
      'bench',
      'copy',
      '--managed',
      '--json',
      '--sizes',
      '1M',
      '--page-sizes',
      '4K,64K',
      '--iters',
      '1',
      '--out',
      out,
    ]);
    expect(r.code, r.stderr).toBe(0);
    type Row = {
      path: string;
      policy?: string;
      pageSize?: number;
      bytes: number;
      gbps: number;
      ratio?: number;
      rawPath?: string;
      verified?: boolean;
    };
    const rows = JSON.parse(r.stdout) as Row[];
    const raw = rows.filter((x) => x.policy === undefined);
    const managed = rows.filter((x) => x.policy !== undefined);
    expect(managed.length).toBe(2 * 2 * 2); // two paths, two page sizes, two policies
    for (const m of managed) {
      expect(['managed-h2d', 'managed-d2h']).toContain(m.path);
      expect(['mirror', 'migrate']).toContain(m.policy);
      expect([4096, 65536]).toContain(m.pageSize);
      expect(m.bytes).toBe(1 << 20);
      expect(m.gbps).toBeGreaterThan(0);
      expect(m.verified).toBe(true);
      // The ratio's base is the fastest raw path of the same direction and size, of this run.
      const dir2 = m.path === 'managed-h2d' ? 'h2d' : 'd2h';
      const same = raw.filter((x) => x.bytes === m.bytes && x.path.startsWith(dir2));
      const best = same.reduce((a, b) => (b.gbps > a.gbps ? b : a));
      expect(m.rawPath).toBe(best.path);
      expect(m.ratio).toBeCloseTo(m.gbps / best.gbps, 9);
    }
    // The report: machine, adapter, settings, both kinds of rows, a target per managed row.
    const name = readdirSync(out).find((f) => f.startsWith('copy-') && f.endsWith('.json'))!;
    const report = JSON.parse(readFileSync(join(out, name), 'utf8'));
    expect(report.machine.cores).toBeGreaterThan(0);
    expect(report.settings.managed).toBe(true);
    expect(report.managed.length).toBe(managed.length);
    expect(report.targets.length).toBe(managed.length);
    for (const t of report.targets) expect(t.met).toBe(t.measured >= 0.9);
    expect(readFileSync(join(out, name.replace(/\.json$/, '.svg')), 'utf8')).toContain('managed-h2d');
  });

  it('bench copy --managed with a bad --page-sizes, --policy or sizes under 1 MiB exits 2 before the device opens', async () => {
    const bad = await hmmlab(['bench', 'copy', '--managed', '--page-sizes', '3000']);
    expect(bad.code).toBe(2);
    expect(ourStderr(bad.stderr)).toEqual([expect.stringMatching(/^hmmlab: EINVAL: .*3000/)]);
    const small = await hmmlab(['bench', 'copy', '--managed', '--sizes', '4K,64K']);
    expect(small.code).toBe(2);
    expect(ourStderr(small.stderr)).toEqual([
      expect.stringMatching(
        /^hmmlab: EINVAL: bench copy --managed: the managed rows are measured at 1 MiB and more/,
      ),
    ]);
    const odd = await hmmlab(['bench', 'copy', '--managed', '--sizes', '1M', '--page-sizes', '2M']);
    expect(odd.code).toBe(2);
    expect(ourStderr(odd.stderr)).toEqual([
      expect.stringMatching(/^hmmlab: EINVAL: .*no size of 1 MiB holds a whole number of pages of 2 MiB/),
    ]);
    const none = await hmmlab(['bench', 'copy', '--managed', '--policy', 'none']);
    expect(none.code).toBe(2);
    expect(ourStderr(none.stderr)).toEqual([
      expect.stringMatching(/^hmmlab: EINVAL: bad --policy "none": "none" is not a policy with a device/),
    ]);
  });

  it('--adapter nope exits non-zero with one line and no stack trace', async () => {
    const r = await hmmlab(['--adapter', 'nope', 'info']);
    expect(r.code).not.toBe(0);
    expect(r.stdout).toBe('');
    const lines = ourStderr(r.stderr);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^hmmlab: ENODEV: .*"nope"/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('a bad --sizes is a one-line EINVAL with exit status 2', async () => {
    const r = await hmmlab(['bench', 'copy', '--json', '--sizes', '4K,lots']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(ourStderr(r.stderr)).toEqual([expect.stringMatching(/^hmmlab: EINVAL: bad size "lots"/)]);
  });

  it('a size under 4 bytes is EINVAL before the device opens (exit 2); tiny rates print in MB/s', async () => {
    const r = await hmmlab(['bench', 'copy', '--sizes', '4K,3']);
    expect(r.code).toBe(2);
    expect(ourStderr(r.stderr)).toEqual([
      'hmmlab: EINVAL: bad size 3: a copy is at least 4 bytes (WebGPU copies whole 4-byte words)',
    ]);
    expect(formatRate(1.234)).toBe('1.23');
    expect(formatRate(0.00123)).toBe('1.23 MB/s');
  });

  it('the device name has no trailing dash; a backend without an adapter names those that exist (exit 3)', async () => {
    const info = await hmmlab(['info', '--json']);
    expect(JSON.parse(info.stdout).device).not.toMatch(/-$/);
    const r = await hmmlab(['--backend', 'opengl', 'info']);
    expect(r.code).toBe(3);
    const lines = ourStderr(r.stderr);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      /^hmmlab: ENODEV: no WebGPU adapter on backend "opengl" \(.*\); these exist: .+ \[\w+\]: leave out --backend/,
    );
    expect(lines[0]).not.toMatch(/setup\.sh/);
  });

  it('a size over maxBufferSize is ELIMIT (bad input: exit 2)', async () => {
    const r = await hmmlab(['bench', 'copy', '--sizes', '64G', '--paths', 'd2d-copy']);
    expect(r.code).toBe(2);
    expect(ourStderr(r.stderr)).toEqual([expect.stringMatching(/^hmmlab: ELIMIT: .*68719476736/)]);
  });
});
