/**
 * `hmmlab stress --concurrent` as a user runs it (a child process, the real adapter, real worker
 * threads and files): a short run under each device policy passes with every counter, slot and
 * the disk as both sides wrote them, and its --json object has the fields, with CPU accesses
 * made while kernels ran; its options are checked before anything runs (exit 2, one line); on a
 * terminal it shows a progress bar on stderr. The failure side (a violation exits 1 naming page,
 * states and seed) is test/stress/planted.test.ts's.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { BIN, hmmlab, ourStderr } from '../helpers/cli.ts';

const SEED = Number(process.env.HMMLAB_SEED ?? 20240611);
/** A short run: enough kernels and CPU accesses to meet, a few seconds in all. */
const SHORT = ['--device-threads', '10000', '--cpu-threads', '2', '--duration', '1.5'];

describe.each(['mirror', 'migrate'])('stress --concurrent under %s', (policy) => {
  test('passes: counters, slots and the disk as both sides wrote them, races real', async () => {
    const seed = SEED + (policy === 'mirror' ? 1 : 2);
    const r = await hmmlab([
      'stress',
      '--concurrent',
      ...SHORT,
      '--policy',
      policy,
      '--seed',
      `${seed}`,
      '--json',
    ]);
    const err = ourStderr(r.stderr);
    expect(r.code, err.join('\n')).toBe(0);
    // The seed comes first, on stderr with --json (stdout is the one object).
    expect(err[0]).toMatch(new RegExp(`^stress --concurrent: seed ${seed} \\(--seed ${seed} repeats`));
    const j = JSON.parse(r.stdout);
    console.log(
      `stress --concurrent ${policy} seed ${seed}: ${j.atomicKernels} atomic + ${j.slotKernels} slot kernels, ` +
        `${j.deviceIncrements} device + ${j.cpuIncrements} cpu increments, ${j.cpuAccessesDuringKernels} cpu ` +
        `accesses during kernels, ${j.mmuIntervalRetries} mmu_interval retries, ${j.shootdownWaits} shootdown waits`,
    );
    expect(j).toMatchObject({
      seed,
      policy,
      deviceThreads: 10000,
      cpuThreads: 2,
      lostUpdates: 0,
      counterMismatches: 0,
      slotMismatches: 0,
      staleReads: 0,
      diskMatches: true,
      invariantViolations: 0,
      passed: true,
      violations: [],
      planted: null,
    });
    expect(j.deviceIncrements).toBe(j.atomicKernels * 10000 * 4);
    expect(j.atomicKernels).toBeGreaterThan(0);
    expect(j.cpuIncrements).toBeGreaterThan(0);
    expect(j.cpuAccessesDuringKernels).toBeGreaterThan(0);
    expect(j.cpuAccessesDuringKernels).toBeLessThanOrEqual(j.cpuAccesses);
    // Both sides took the pages from each other: CPU PTE changes shot down, device faults served.
    expect(j.cpuShootdowns).toBeGreaterThan(0);
    expect(j.cpuFaults).toBeGreaterThan(0);
    expect(j.invariantChecks).toBeGreaterThan(0);
    for (const k of ['mmuIntervalRetries', 'shootdownWaits', 'hostReclaim', 'deviceEvictions', 'fsyncs'])
      expect(Number.isInteger(j[k]), k).toBe(true);
    expect(j.command).toContain(`--seed ${seed}`);
  });
});

test('its options are checked before anything runs: one line each, exit 2', async () => {
  const cases: [string[], RegExp][] = [
    [['--duration', '1'], /--duration goes with --concurrent/],
    [['--device-threads', '10'], /--device-threads goes with --concurrent/],
    [['--concurrent', '--policy', 'none'], /--concurrent needs a device policy/],
    [['--concurrent', '--ops', '10'], /--ops does not go with --concurrent/],
    [['--concurrent', '--duration', '0'], /bad --duration "0"/],
    [['--concurrent', '--device-threads', `${(1 << 20) + 1}`], /bad --device-threads/],
  ];
  for (const [args, message] of cases) {
    const r = await hmmlab(['stress', ...args]);
    expect(r.code, args.join(' ')).toBe(2);
    expect(ourStderr(r.stderr), args.join(' ')).toEqual([expect.stringMatching(message)]);
    expect(r.stdout).toBe('');
  }
});

test.skipIf(!existsSync('/usr/bin/script'))(
  'on a terminal, --concurrent shows a progress bar on stderr',
  async () => {
    const term = await new Promise<string>((resolve, reject) =>
      execFile(
        'script',
        [
          '-qec',
          `node ${BIN} stress --concurrent ${SHORT.join(' ')} --duration 2 --seed ${SEED}`,
          '/dev/null',
        ],
        { env: { ...process.env, HMMLAB_ADAPTER: '', HMMLAB_BACKEND: '' }, timeout: 90_000 },
        (err, stdout) => (err ? reject(err) : resolve(stdout)),
      ),
    );
    expect(term).toMatch(new RegExp(`concurrent \\[[=-]+\\] \\d/2 s \\| [\\d,]+ kernels \\| seed ${SEED}`));
    expect(term).toMatch(/concurrent stress passed in /);
  },
);
