/**
 * `hmmlab stress` as a user runs it (a child process, real adapter, real files): a small run with
 * tiny host and device budgets passes and prints its seed first; the same seed gives the same
 * workload and the same files; --save-ops writes a log that `hmmlab replay --check` replays to the
 * same file; --json is one object on stdout; bad options are EINVAL (exit 2). The failure path is
 * provoked for real: a block budget (--blocks) too small for the workload makes page_mkwrite refuse
 * a write (ENOSPC), and the saved log with the printed replay command fails the same way; so does
 * the shrunk log saved next to it, which is shorter.
 * Also: the progress bars of stress and of replay (> 2,000 ops) appear on a terminal's stderr
 * (a pty from script(1)) and leave stdout untouched.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { parseOplog } from '../../src/oplog/parse.ts';
import { type Op, serializeOplog } from '../../src/oplog/schema.ts';
import { runSeed, stressOplog } from '../../src/oplog/stress.ts';
import { BIN, hmmlab, ourStderr } from '../helpers/cli.ts';

/** Fixed seeds: every case is replayable by its arguments; SEED shifts them all. */
const SEED = Number(process.env.HMMLAB_SEED ?? 20240611);
const SMALL = [
  '--ops',
  '300',
  '--runs',
  '2',
  '--page-size',
  '4K',
  '--host-pages',
  '8',
  '--device-pages',
  '8',
];
const MAX_FILE_SIZE = 32 * 4096; // the default: 32 pages

let dir: string;
beforeAll(async () => {
  console.log(`stress tests: seed ${SEED} (HMMLAB_SEED=${SEED} reruns them)`);
  dir = await mkdtemp(join(tmpdir(), 'hmmlab-stress-test-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The one JSON line of stdout. */
function summaryOf(stdout: string) {
  const lines = stdout.trimEnd().split('\n');
  expect(lines).toHaveLength(1);
  return JSON.parse(lines[0]);
}

test('a small stress run passes with exit 0 and prints its seed first', async () => {
  const r = await hmmlab(['stress', ...SMALL, '--seed', String(SEED)]);
  expect(r.code, r.stderr).toBe(0);
  const lines = r.stdout.trimEnd().split('\n');
  expect(lines[0]).toBe(
    `stress: seed ${SEED} (--seed ${SEED} repeats it); 2 runs of 300 ops, policy mirror with device ops, ` +
      '8 device pages, batch 256, page size 4 KiB, 8 host pages, max file size 128 KiB',
  );
  expect(lines[1]).toMatch(
    /^stress passed: 600 ops in 2 runs, \d+ ops\/s \([\d.]+ s\); every read and \d+ disk images/,
  );
  // Budgets of 8 pages under a 32-page file: host reclaim and device eviction ran.
  const m = /host reclaim (\d+) pages.*device evictions (\d+)/.exec(lines[2]);
  expect(m, lines[2]).not.toBeNull();
  expect(Number(m![1])).toBeGreaterThan(0);
  expect(Number(m![2])).toBeGreaterThan(0);
  expect(ourStderr(r.stderr)).toEqual([]); // no bar: stderr is not a terminal
});

test('--json prints one object on stdout; the same seed gives the same workload and files', async () => {
  const args = ['stress', ...SMALL, '--seed', String(SEED + 1), '--json'];
  const [a, b] = [await hmmlab(args), await hmmlab(args)];
  expect(a.code, a.stderr).toBe(0);
  expect(b.code, b.stderr).toBe(0);
  expect(a.stderr).toMatch(new RegExp(`^stress: seed ${SEED + 1} `, 'm')); // the seed, on stderr with --json
  const sa = summaryOf(a.stdout);
  const sb = summaryOf(b.stdout);
  expect(sa).toMatchObject({ seed: SEED + 1, runs: 2, runsPassed: 2, ops: 600, failure: null, saved: null });
  expect(sa.results.map((x: { seed: number }) => x.seed)).toEqual([SEED + 1, SEED + 2]);
  const workload = (s: typeof sa) => s.results.map(({ elapsedMs: _, ...x }: { elapsedMs: number }) => x);
  // Ops, reads, disk checks and the final file (size, sha256) of each run: the same.
  expect(workload(sb)).toEqual(workload(sa));
  expect(sa.counters.pgsteal_direct).toBeGreaterThan(0);
  expect(sa.counters.device_faults_unique).toBeGreaterThan(0);
});

test('--save-ops without a failure saves the last run, which replay --check reproduces exactly', async () => {
  const path = join(dir, 'workload.jsonl');
  const seed = SEED + 10;
  const r = await hmmlab(['stress', ...SMALL, '--seed', String(seed), '--json', '--save-ops', path]);
  expect(r.code, r.stderr).toBe(0);
  const s = summaryOf(r.stdout);
  expect(s.saved).toBe(path);
  const text = await readFile(path, 'utf8');
  const opts = { ops: 300, device: true, pageSize: 4096, maxFileSize: MAX_FILE_SIZE };
  expect(text).toBe(serializeOplog(stressOplog(opts, runSeed(seed, 1)))); // run 2's log, whole
  expect(parseOplog(text).ops.some((op) => op.op === 'devwrite')).toBe(true);

  const rep = await hmmlab([
    'replay',
    path,
    '--check',
    '--json',
    '--policy',
    'mirror',
    '--host-pages',
    '8',
    '--device-pages',
    '8',
  ]);
  expect(rep.code, rep.stderr).toBe(0);
  const end = JSON.parse(rep.stdout.trimEnd().split('\n').at(-1)!);
  expect(end).toEqual({ op: 'end', size: s.results[1].size, sha256: s.results[1].sha256 });
});

// Concurrent: each is a child process that exits before opening the GPU.
test.concurrent.each([
  [['--ops', '0'], 'EINVAL: bad --ops "0": expected a positive integer'],
  [['--policy', 'kara'], `EINVAL: bad --policy "kara": expected one of 'mirror', 'migrate', 'none'`],
  [['--seed', '2147483648'], 'EINVAL: bad --seed "2147483648": expected an integer from 0 to 2147483647'],
  [
    ['--device', '--policy', 'none'],
    'EINVAL: --device needs a device policy (mirror or migrate): device ops run on the GPU',
  ],
  [['--max-file-size', '100'], 'EINVAL: bad --max-file-size "100": expected an integer >= 512'],
])('bad option %j: EINVAL in one line, exit 2, nothing run', async (args, message) => {
  const r = await hmmlab(['stress', ...args]);
  expect(r.code).toBe(2);
  expect(r.stdout).toBe('');
  expect(ourStderr(r.stderr)).toEqual([`hmmlab: ${message}`]);
});

describe('a real failure: a block budget too small for the workload', () => {
  test('stops at the failing op, saves the log up to it, and the printed replay command fails the same way', async () => {
    const path = join(dir, 'failure.jsonl');
    const seed = SEED + 20;
    const r = await hmmlab(['stress', ...SMALL, '--seed', String(seed), '--blocks', '8', '--save-ops', path]);
    expect(r.code).toBe(1);
    const err = ourStderr(r.stderr);
    const head = /^stress FAILED: seed (\d+) \(run (\d) of 2\), line (\d+): (\{.*\})$/.exec(err[0]);
    expect(head, err.join('\n')).not.toBeNull();
    const [failSeed, run, line] = [Number(head![1]), Number(head![2]), Number(head![3])];
    expect(failSeed).toBe(runSeed(seed, run - 1));
    const reason = /^reason: (E[A-Z]+): line (\d+) \(.*\): (.*)$/.exec(err[1]);
    expect(reason, err[1]).not.toBeNull();
    expect(Number(reason![2])).toBe(line);
    expect(reason![3]).toMatch(/ENOSPC/); // page_mkwrite ran out of blocks, whichever path asked
    expect(err[2]).toBe(`saved the log up to and including line ${line} (${line} ops) to ${path}`);

    // The saved log is the generated one up to and including the failing op, whose line was printed.
    const text = await readFile(path, 'utf8');
    const opts = { ops: 300, device: true, pageSize: 4096, maxFileSize: MAX_FILE_SIZE };
    expect(text).toBe(serializeOplog(stressOplog(opts, failSeed).slice(0, line)));
    expect(text.trimEnd().split('\n').at(-1)).toBe(head![4]);

    // The printed command, run as printed (npx hmmlab = bin/hmmlab.mjs), fails with the same reason.
    const cmd = /^reproduce: npx hmmlab (.*)$/.exec(err[3]);
    expect(cmd, err[3]).not.toBeNull();
    const args = cmd![1].split(' ');
    expect(args).toEqual([
      'replay',
      path,
      '--check',
      '--policy',
      'mirror',
      '--page-size',
      '4096',
      '--host-pages',
      '8',
      '--device-pages',
      '8',
      '--batch',
      '256',
      '--blocks',
      '8',
    ]);
    const rep = await hmmlab(args);
    expect(rep.code).toBe(1);
    expect(ourStderr(rep.stderr)).toEqual([`hmmlab: ${err[1].slice('reason: '.length)}`]);

    // Then the shrunk log, next to the full one: shorter, and it still fails with the same code.
    const min = join(dir, 'failure.min.jsonl');
    const shrunk =
      /^shrunk it to (\d+) ops? that still fail with (E[A-Z]+) \(\d+ replays?\): saved to (.*)$/.exec(err[4]);
    expect(shrunk, err[4]).not.toBeNull();
    expect(shrunk![3]).toBe(min);
    expect(shrunk![2]).toBe(reason![1]);
    const minOps = parseOplog(await readFile(min, 'utf8')).ops;
    expect(minOps).toHaveLength(Number(shrunk![1]));
    expect(minOps.length).toBeLessThan(line);
    const minCmd = /^reproduce the shrunk log: npx hmmlab (.*)$/.exec(err[5]);
    expect(minCmd![1].split(' ')).toEqual(['replay', min, ...args.slice(2)]);
    const minRep = await hmmlab(minCmd![1].split(' '));
    expect(minRep.code).toBe(1);
    expect(ourStderr(minRep.stderr)).toEqual([
      expect.stringMatching(new RegExp(`^hmmlab: ${shrunk![2]}: line ${minOps.length} `)),
    ]);
  });

  test('without --save-ops the failing log goes to the temporary directory, named with the seed (--json)', async () => {
    const seed = SEED + 30 + (process.pid % 1000); // apart from other runs' files
    const path = join(tmpdir(), `hmmlab-stress-seed${seed}.jsonl`);
    try {
      // --blocks 0: the first write that needs a block fails. Host only: no GPU needed for this one.
      const r = await hmmlab([
        'stress',
        '--ops',
        '200',
        '--seed',
        String(seed),
        '--policy',
        'none',
        '--blocks',
        '0',
        '--json',
      ]);
      expect(r.code).toBe(1);
      const s = summaryOf(r.stdout);
      expect(s.saved).toBe(path);
      expect(s.failure).toMatchObject({ seed, run: 0, code: 'ENOSPC' });
      expect(s.failure.replay).toBe(
        `npx hmmlab replay ${path} --check --policy none --page-size 4096 --host-pages 16 --blocks 0`,
      );
      const saved = parseOplog(await readFile(path, 'utf8')).ops;
      expect(saved).toHaveLength(s.failure.line);
      expect(saved.at(-1)).toEqual(s.failure.op);
      expect(['write', 'mapwrite', 'diowrite']).toContain(s.failure.op.op);
    } finally {
      await rm(path, { force: true });
    }
  });
});

/** Run `hmmlab ...` on a pty (script(1)): stdin, stdout and stderr are all the terminal. */
function onTerminal(shell: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      'script',
      ['-qec', shell, '/dev/null'],
      {
        env: { ...process.env, HMMLAB_ADAPTER: '', HMMLAB_BACKEND: '' },
        timeout: 90_000,
        maxBuffer: 16 << 20,
      },
      (err, stdout) => (err ? reject(err) : resolve(stdout)),
    );
  });
}

test.skipIf(!existsSync('/usr/bin/script'))(
  'on a terminal, stress and replay of > 2,000 ops show a progress bar on stderr; stdout is untouched',
  async () => {
    const seed = SEED + 40;
    const log = join(dir, 'long.jsonl');
    const out = join(dir, 'long.out');
    const term = await onTerminal(
      `node ${BIN} stress --policy none --ops 2100 --seed ${seed} --save-ops ${log} && ` +
        `node ${BIN} replay ${log} --json > ${out}`,
    );
    expect(term).toMatch(new RegExp(`stress \\[[=-]+\\] \\d+/2100 ops \\| \\d+ ops/s \\| seed ${seed}`));
    expect(term).toMatch(/replay \[[=-]+\] \d+\/2100 ops \| \d+ ops\/s/);
    // The same replay with stderr not a terminal: the very same stdout, and no bar anywhere.
    const plain = await hmmlab(['replay', log, '--json']);
    expect(plain.code).toBe(0);
    expect(ourStderr(plain.stderr)).toEqual([]);
    expect(await readFile(out, 'utf8')).toBe(plain.stdout);
  },
);

test.skipIf(!existsSync('/usr/bin/script'))(
  'a replay of 2,000 ops or fewer shows no bar even on a terminal',
  async () => {
    const log = join(dir, 'short.jsonl');
    await writeFile(
      log,
      serializeOplog(
        stressOplog({ ops: 2000, device: false, pageSize: 4096, maxFileSize: MAX_FILE_SIZE }, SEED),
      ),
    );
    const term = await onTerminal(`node ${BIN} replay ${log} --json > /dev/null`);
    expect(term).not.toMatch(/replay \[/);
  },
);

test("a shrinking replay mounts with the run's --max-file-size, as the run did", async () => {
  const { stressReplay } = await import('../../src/oplog/stress.ts');
  // A short write past the 1 GiB default limit, inside the run's 2 GiB one (the file is sparse).
  const off = 1.5 * 2 ** 30;
  const log: Op[] = [
    { op: 'write', off, len: 4096, tag: 1 },
    { op: 'read', off, len: 4096 },
  ];
  const setup = { pageSize: 4096, hostPages: 8, blocks: undefined };
  expect(await stressReplay(log, { ...setup, maxFileSize: 2 ** 31 })).toBeNull();
  expect((await stressReplay(log, setup))?.code).toBe('EFBIG');
});
