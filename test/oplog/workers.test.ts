/**
 * fsx from the CPU worker threads (src/oplog/workers.ts) as a user runs it: `hmmlab stress
 * --cpu-threads 2` under each device policy passes with its ops made from the workers (the
 * reference model and the invariants checking them, the other worker watching pages the op leaves
 * alone) and leaves the very file the same seed leaves from the main thread; `hmmlab replay
 * --cpu-threads 2` prints what the main thread's replay prints. fsync-race.jsonl is a log the
 * workers once failed on (a CPU fault pulled a device entry into a page while fsync's writeback
 * passed it: the disk missed the device's data), replayed a few times since the race is the
 * machine's.
 */
import { fileURLToPath } from 'node:url';
import { describe, expect, test } from 'vitest';
import { hmmlab, ourStderr } from '../helpers/cli.ts';

const SEED = Number(process.env.HMMLAB_SEED ?? 20240611);
const RUN = ['--ops', '300', '--host-pages', '8', '--device-pages', '8', '--no-shrink', '--json'];

describe.each(['mirror', 'migrate'])('stress --cpu-threads 2 under %s', (policy) => {
  test('passes from the workers, and leaves the file the main thread leaves', async () => {
    const seed = SEED + (policy === 'mirror' ? 11 : 12);
    const args = ['stress', ...RUN, '--policy', policy, '--seed', `${seed}`];
    const [w, main] = [await hmmlab([...args, '--cpu-threads', '2']), await hmmlab(args)];
    expect(w.code, ourStderr(w.stderr).join('\n')).toBe(0);
    expect(main.code, ourStderr(main.stderr).join('\n')).toBe(0);
    expect(ourStderr(w.stderr)[0]).toMatch(/, file ops from 2 cpu worker threads$/);
    const jw = JSON.parse(w.stdout);
    const jm = JSON.parse(main.stdout);
    console.log(
      `stress --cpu-threads 2 ${policy} seed ${seed}: ${jw.workerOps} ops from the workers, ${jw.watchLoads} watched loads`,
    );
    expect(jw).toMatchObject({ seed, ops: 300, failure: null, cpuThreads: 2 });
    // Every op but the device ops, drop_caches and remount came from a worker.
    expect(jw.workerOps).toBeGreaterThan(150);
    expect(jw.workerOps).toBeLessThan(300);
    expect(jw.watchLoads).toBeGreaterThan(0);
    expect(jm).toMatchObject({ cpuThreads: 0, workerOps: 0, watchLoads: 0 });
    expect(jw.results[0].sha256).toBe(jm.results[0].sha256);
    expect(jw.results[0].size).toBe(jm.results[0].size);
  });
});

test('replay --cpu-threads 2 --check prints what the main thread prints', async () => {
  const log = fileURLToPath(new URL('../../examples/dev.jsonl', import.meta.url));
  const args = ['replay', log, '--check', '--json', '--host-pages', '8', '--device-pages', '8'];
  const [w, main] = [await hmmlab([...args, '--cpu-threads', '2']), await hmmlab(args)];
  expect(w.code, ourStderr(w.stderr).join('\n')).toBe(0);
  expect(main.code).toBe(0);
  expect(w.stdout).toBe(main.stdout);
  const human = await hmmlab(['replay', log, '--check', '--cpu-threads', '2']);
  expect(human.stdout).toMatch(/; \d+ ops? made from 2 cpu worker threads/);
  const bad = await hmmlab(['replay', log, '--cpu-threads', '0']);
  expect(bad.code).toBe(2);
  expect(ourStderr(bad.stderr)).toEqual([
    expect.stringMatching(/bad --cpu-threads "0": expected a positive integer/),
  ]);
});

test("fsync-race.jsonl: fsync writes back the device entry a worker's fault pulls in meanwhile", async () => {
  const log = fileURLToPath(new URL('./fsync-race.jsonl', import.meta.url));
  const args = [...'--check --policy mirror --host-pages 16 --device-pages 16 --cpu-threads 2'.split(' ')];
  for (let k = 0; k < 3; k++) {
    const r = await hmmlab(['replay', log, ...args]);
    expect(r.code, ourStderr(r.stderr).join('\n')).toBe(0);
    expect(r.stdout).toMatch(/every read and 2 disk images match the reference model/);
  }
});

test('stress --cpu-threads 2 --inject-rate: the workers meet the faults, each op run again passes', async () => {
  const seed = SEED + 13;
  const r = await hmmlab([
    'stress',
    ...RUN,
    '--seed',
    `${seed}`,
    '--cpu-threads',
    '2',
    '--inject-rate',
    '0.02',
  ]);
  expect(r.code, ourStderr(r.stderr).join('\n')).toBe(0);
  const j = JSON.parse(r.stdout);
  expect(j).toMatchObject({ failure: null, cpuThreads: 2 });
  expect(j.retriedOps).toBeGreaterThan(0);
  expect(j.workerOps).toBeGreaterThan(150);
  // The watchers stand down under injection: their faults would draw from the injector.
  expect(j.watchLoads).toBe(0);
});
