/**
 * `--stats-json FILE` of replay and stress: every counter (events after the final unmount, gauges
 * such as nr_file_pages and device_frames_used as they stood before it) and the fault batches in
 * time order, each with the line of the op whose kernel took the faults; the batches' raw faults
 * add up to device_faults. A failed run reports its stats and its snapshot too.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import type { BatchJson } from '../../src/cli/stats.ts';
import { hmmlab } from '../helpers/cli.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hmmlab-stats-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface StatsJson {
  command: string;
  counters: Record<string, number>;
  gauges: Record<string, number>;
  batches: BatchJson[];
  failure: { code: string; message: string } | null;
}

const sum = (bs: BatchJson[], f: (b: BatchJson) => number) => bs.reduce((s, b) => s + f(b), 0);

function expectBatchesAddUp(s: StatsJson): void {
  expect(s.batches.length).toBeGreaterThan(0);
  expect(sum(s.batches, (b) => b.faultsRaw)).toBe(s.counters.device_faults);
  expect(sum(s.batches, (b) => b.faultsUnique)).toBe(s.counters.device_faults_unique);
  expect(s.batches.length).toBe(s.counters.device_fault_batches);
  for (const b of s.batches) expect(b.faultsRaw).toBe(b.faultsDuplicate + b.faultsUnique);
}

test('replay --stats-json: the batches, tagged with their op lines, add up to the counters', async () => {
  const log = join(dir, 'dev.jsonl');
  const out = join(dir, 'dev.stats.json');
  await writeFile(
    log,
    [
      '{"op":"write","off":0,"len":65536,"tag":1}',
      '{"op":"devwrite","off":0,"len":65536,"tag":2}',
      '{"op":"dropcaches"}',
      '{"op":"devread","off":49152,"len":8192}', // pages 12-13: evicted by the devwrite, they fault again
      '{"op":"read","off":0,"len":16384}',
    ].join('\n'),
  );
  const r = await hmmlab([
    'replay',
    log,
    '--host-pages',
    '8',
    '--device-pages',
    '8',
    '--batch',
    '4',
    '--stats-json',
    out,
  ]);
  expect(r.code, r.stderr).toBe(0);
  const s = JSON.parse(await readFile(out, 'utf8')) as StatsJson;
  expect(s.command).toBe('replay');
  expect(s.failure).toBeNull();
  expectBatchesAddUp(s);
  expect(new Set(s.batches.map((b) => `${b.line} ${b.op}`))).toEqual(new Set(['2 devwrite', '4 devread']));
  expect(s.batches.filter((b) => b.line === 2).length).toBeGreaterThanOrEqual(4); // 16 faults, batches of 4
  for (const b of s.batches) expect(b.pagesHostToDevice).toBe(b.bytesHostToDevice / 4096);
  // Gauges before the final unmount; no gauge among the counters.
  expect(s.gauges.nr_file_pages).toBeGreaterThan(0);
  expect(s.gauges.device_frames_used).toBeGreaterThan(0);
  expect(Object.keys(s.counters).some((k) => k in s.gauges)).toBe(false);
  expect(s.counters.nr_written).toBeGreaterThan(0); // an event counter, after the unmount's writeback
});

test('a failed replay still reports: --stats, --snapshot and --stats-json, then the error last', async () => {
  const log = join(dir, 'fail.jsonl');
  const out = join(dir, 'fail.stats.json');
  await writeFile(
    log,
    '{"op":"write","off":0,"len":8192,"tag":1}\n{"op":"devread","off":0,"len":8192}\n{"op":"write","off":8192,"len":10,"tag":2}\n',
  );
  const r = await hmmlab(['replay', log, '--blocks', '2', '--stats', '--snapshot', '--stats-json', out]);
  expect(r.code).toBe(1);
  expect(r.stderr).toMatch(/^page states of oplog\.dat when the run failed:$/m);
  expect(r.stderr).toMatch(/^nr_file_pages 2$/m);
  expect(r.stderr).toMatch(/^fault batches: 1;/m);
  expect(r.stderr.trimEnd().split('\n').at(-1)).toMatch(
    /^hmmlab: ENOSPC: line 3 \(write off=8192 len=10 tag=2\): /,
  );
  const s = JSON.parse(await readFile(out, 'utf8')) as StatsJson;
  expect(s.failure?.code).toBe('ENOSPC');
  expectBatchesAddUp(s);
});

test('stress --stats-json: the batches of every run, with run, seed and line, add up to the counters', async () => {
  const out = join(dir, 'stress.stats.json');
  const args = 'stress --ops 150 --runs 2 --seed 21 --host-pages 8 --device-pages 8 --json'.split(' ');
  const r = await hmmlab([...args, '--stats-json', out]);
  expect(r.code, r.stderr).toBe(0);
  const s = JSON.parse(await readFile(out, 'utf8')) as StatsJson;
  expect(s.command).toBe('stress');
  expectBatchesAddUp(s);
  expect(new Set(s.batches.map((b) => `${b.run}:${b.seed}`))).toEqual(new Set(['0:21', '1:22']));
  for (const b of s.batches) expect(['devread', 'devwrite']).toContain(b.op);
  expect(JSON.parse(r.stdout).counters.device_faults).toBe(s.counters.device_faults);
});
