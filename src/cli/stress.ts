/**
 * `hmmlab stress`: fsx as a user command. Seeded random op logs, each applied to a fresh file with
 * the reference model and the invariant checker after every op (src/oplog/stress.ts), run after run
 * with seeds S, S+1, ... The seed comes first in the output, so that any run can be repeated.
 *
 * The first failure stops it: the seed, the failing op's line and the reason go to stderr first,
 * the log up to and including that op is saved (--save-ops FILE, else a file in os.tmpdir() named
 * with the seed) with the `hmmlab replay --check` command that reproduces it; then the log is
 * shrunk (delta debugging, at most --shrink-replays replays, each on a fresh mount) and the shrunk
 * log saved next to it (FILE.min.jsonl) with its own command; exit status 1. Output paths are
 * checked before the first run. With --json, stdout carries one JSON summary object and nothing else.
 */

import type { Command } from 'commander';
import { formatBytes, parseCount, parsePageSize, plural } from '../bench/units.ts';
import { errorMessage, HmmlabError, isHmmlabError } from '../errors.ts';
import { formatFired } from '../inject/inject.ts';
import { formatTraceEvent, type PageSet, parsePageSet } from '../mm/trace.ts';
import { formatOp } from '../oplog/schema.ts';
import type { ReplaySetup, StressFailure, StressReplaySetup, StressResult } from '../oplog/stress.ts';
import { CONCURRENT_DEFAULTS, runConcurrent } from './concurrent.ts';
import { debugEnabled, errorCode, setReproduceHint } from './exit.ts';
import { checkBackingDir, checkOutputFile } from './paths.ts';
import { POLICY_HELP, parsePolicy, policyHasDevice } from './policy.ts';
import { opsProgressBar, stepsProgressBar } from './progress.ts';
import { FaultBatchCollector, formatStats, writeStatsJson } from './stats.ts';
import { addOpMixOptions, DEFAULT_FILE_PAGES, opMixOf, parseMaxFileSize, parseSeed } from './workload.ts';

interface StressCliOptions {
  ops?: string;
  seed?: string;
  runs?: string;
  device?: boolean;
  policy?: string;
  pageSize?: string;
  hostPages?: string;
  devicePages?: string;
  batch?: string;
  blocks?: string;
  maxFileSize?: string;
  saveOps?: string;
  dir?: string;
  overwrite?: boolean;
  shrink?: boolean;
  shrinkReplays?: string;
  json?: boolean;
  stats?: boolean;
  statsJson?: string;
  injectRate?: string;
  cpuThreads?: string;
  concurrent?: boolean;
  deviceThreads?: string;
  duration?: string;
  trace?: string;
  [name: string]: unknown;
}

/** What a run is, parsed and checked whole before the GPU opens or anything runs. */
export interface StressArgs {
  ops: number;
  seed: number;
  runs: number;
  device: boolean;
  policy: import('./policy.ts').PolicyName;
  pageSize: number;
  hostPages: number;
  devicePages: number;
  batch: number;
  blocks?: number;
  maxFileSize: number;
  /** The op mix: weights 0 for the ops the --no-X switches leave out, and those switches' names. */
  weights: Partial<Record<import('../oplog/schema.ts').OpName, number>>;
  without: string[];
  saveOps?: string;
  dir?: string;
  overwrite: boolean;
  /** Replays the shrinking may take (0: no shrinking). */
  shrinkReplays: number;
  json: boolean;
  stats: boolean;
  statsJson?: string;
  /** Probability that each attempt at a transient fault-injection point fails (0: none). */
  injectRate: number;
  /** --trace: the pages whose events are printed on stderr (null: none). */
  trace: PageSet | null;
  /** --cpu-threads: the file ops run from this many CPU worker threads (0: the main thread). */
  cpuThreads: number;
}

/** The host-page and device-frame budgets are small by default: reclaim and eviction run all the time. */
export const STRESS_DEFAULTS = {
  ops: 1000,
  runs: 1,
  hostPages: 16,
  devicePages: 16,
  batch: 256,
  filePages: DEFAULT_FILE_PAGES,
  shrinkReplays: 100,
};

export function parseStressArgs(o: StressCliOptions, deviceGiven: boolean): StressArgs {
  const policy = parsePolicy(o.policy);
  if (!policyHasDevice(policy) && deviceGiven && o.device) {
    throw new HmmlabError(
      'EINVAL',
      '--device needs a device policy (mirror or migrate): device ops run on the GPU',
    );
  }
  if (o.overwrite && o.dir === undefined) {
    throw new HmmlabError('EINVAL', '--overwrite goes with --dir (the backing file it would replace)');
  }
  const pageSize = parsePageSize(o.pageSize, 4096);
  const seed = parseSeed(o.seed);
  const maxFileSize = parseMaxFileSize(o.maxFileSize, pageSize);
  const mix = opMixOf(o);
  return {
    ops: parseCount('--ops', o.ops, STRESS_DEFAULTS.ops),
    seed,
    runs: parseCount('--runs', o.runs, STRESS_DEFAULTS.runs),
    device: policyHasDevice(policy) && o.device !== false,
    policy,
    pageSize,
    hostPages: parseCount('--host-pages', o.hostPages, STRESS_DEFAULTS.hostPages),
    devicePages: parseCount('--device-pages', o.devicePages, STRESS_DEFAULTS.devicePages),
    batch: parseCount('--batch', o.batch, STRESS_DEFAULTS.batch),
    blocks: o.blocks === undefined ? undefined : parseCount('--blocks', o.blocks, 0, 0),
    maxFileSize,
    weights: mix.weights,
    without: mix.without,
    saveOps: o.saveOps,
    dir: o.dir,
    overwrite: o.overwrite === true,
    shrinkReplays:
      o.shrink === false
        ? 0
        : parseCount('--shrink-replays', o.shrinkReplays, STRESS_DEFAULTS.shrinkReplays, 0),
    json: o.json === true,
    stats: o.stats === true,
    statsJson: o.statsJson,
    injectRate: parseRate(o.injectRate),
    trace: o.trace === undefined ? null : parsePageSet(o.trace),
    cpuThreads: parseCount('--cpu-threads', o.cpuThreads, 0, 1),
  };
}

function parseRate(text: string | undefined): number {
  if (text === undefined) return 0;
  const p = Number(text);
  if (text.trim() === '' || !Number.isFinite(p) || p < 0 || p > 1) {
    throw new HmmlabError('EINVAL', `bad --inject-rate "${text}": expected a probability from 0 to 1`);
  }
  return p;
}

/** Pages and bytes as the header names them. */
function setupText(a: StressArgs): string {
  const device = policyHasDevice(a.policy)
    ? `policy ${a.policy} ${a.device ? 'with' : 'without'} device ops, ${plural(a.devicePages, 'device page')}, batch ${a.batch}`
    : 'policy none (host only)';
  const blocks = a.blocks === undefined ? '' : `, ${plural(a.blocks, 'block')}`;
  const without = a.without.length ? `, without ${a.without.join(', ')}` : '';
  const inject = a.injectRate > 0 ? `, injecting faults at rate ${a.injectRate}` : '';
  const cpus = a.cpuThreads > 0 ? `, file ops from ${plural(a.cpuThreads, 'cpu worker thread')}` : '';
  return (
    `${plural(a.runs, 'run')} of ${plural(a.ops, 'op')}, ${device}, page size ${formatBytes(a.pageSize)}, ` +
    `${plural(a.hostPages, 'host page')}${blocks}, max file size ${formatBytes(a.maxFileSize)}${without}${inject}${cpus}`
  );
}

const rate = (ops: number, ms: number) => (ms > 0 ? Math.round((ops * 1000) / ms) : 0);

function summaryText(a: StressArgs, r: StressResult): string {
  const c = r.counters;
  const disk = r.runs.reduce((s, x) => s + x.diskChecks, 0);
  const device = policyHasDevice(a.policy)
    ? `; device faults ${c.device_faults} (unique ${c.device_faults_unique}, ${c.device_fault_batches} batches), ` +
      `device evictions ${c.device_evictions}, revocations ${c.device_revocations}`
    : '';
  return (
    `stress passed: ${plural(r.ops, 'op')} in ${plural(r.runs.length, 'run')}, ` +
    `${rate(r.ops, r.elapsedMs)} ops/s (${(r.elapsedMs / 1000).toFixed(1)} s); every read and ${plural(disk, 'disk image')} ` +
    'match the reference model, invariants held after every op\n' +
    `host reclaim ${plural(c.pgsteal_direct, 'page')}, refaults ${c.workingset_refault_file}, device entries ${c.workingset_device_entry}; ` +
    `cpu faults ${c.pgfault} (major ${c.pgmajfault})${device}` +
    (a.cpuThreads > 0
      ? `\ncpu worker threads: ${plural(r.workerOps, 'op')} made from ${plural(a.cpuThreads, 'worker')}, ` +
        `${plural(r.watchLoads, 'load')} of pages the op left alone checked by the others meanwhile`
      : '') +
    (a.injectRate > 0
      ? `\ninjected faults: ${formatFired(r.injected)}; ${plural(r.retriedOps, 'failed attempt')} run again`
      : '')
  );
}

/** The failure itself: where and why (printed first, before anything can go wrong saving it). */
function failureText(f: StressFailure, runs: number): string {
  const where = f.op ? `line ${f.line}: ${formatOp(f.op)}` : `end of log (after line ${f.line})`;
  const lines = [
    `stress FAILED: seed ${f.seed} (run ${f.run + 1} of ${runs}), ${where}`,
    `reason: ${f.reason}`,
  ];
  // Not a user error: hmmlab has a bug; where it was is for HMMLAB_DEBUG=1.
  if (!isHmmlabError(f.error)) {
    const stack = f.error instanceof Error ? f.error.stack : undefined;
    lines.push(debugEnabled() && stack ? stack : 'HMMLAB_DEBUG=1 prints the stack of the EINTERNAL');
  }
  return lines.join('\n');
}

/** A shrunk failure, saved with the command that replays it. */
interface Shrunk {
  path: string;
  ops: number;
  replays: number;
  bounded: boolean;
  command: string;
}

/** The summary object of --json: one on stdout, success or failure. */
function summaryJson(
  a: StressArgs,
  r: StressResult,
  saved?: string,
  command?: string,
  shrunk?: Shrunk | null,
) {
  const f = r.failure;
  return {
    seed: a.seed,
    runs: a.runs,
    runsPassed: r.runs.length,
    opsPerRun: a.ops,
    ops: r.ops,
    elapsedMs: Math.round(r.elapsedMs),
    opsPerSec: rate(r.ops, r.elapsedMs),
    policy: a.policy,
    device: a.device,
    pageSize: a.pageSize,
    hostPages: a.hostPages,
    devicePages: policyHasDevice(a.policy) ? a.devicePages : null,
    batch: policyHasDevice(a.policy) ? a.batch : null,
    blocks: a.blocks ?? null,
    maxFileSize: a.maxFileSize,
    without: a.without,
    counters: r.counters,
    injectRate: a.injectRate,
    injected: r.injected,
    retriedOps: r.retriedOps,
    cpuThreads: a.cpuThreads,
    workerOps: r.workerOps,
    watchLoads: r.watchLoads,
    results: r.runs.map(({ elapsedMs, ...x }) => ({ ...x, elapsedMs: Math.round(elapsedMs) })),
    saved: saved ?? null,
    failure: f
      ? { seed: f.seed, run: f.run, line: f.line, op: f.op, code: f.code, reason: f.reason, replay: command }
      : null,
    shrunk: shrunk ?? null,
  };
}

/**
 * Shrink a failing log (each attempt a replay with `setup` on a fresh mount), save it next to the
 * full one, and print its replay command.
 */
async function shrinkAndSave(
  a: StressArgs,
  f: StressFailure,
  full: string,
  setup: StressReplaySetup,
  replaySetup: ReplaySetup,
): Promise<Shrunk> {
  const { replayCommand, saveOplog, shrinkFailure, shrunkPath, stressReplay } = await import(
    '../oplog/stress.ts'
  );
  const bar = stepsProgressBar('shrink', 'replays', a.shrinkReplays);
  let r: Awaited<ReturnType<typeof shrinkFailure>>;
  try {
    r = await shrinkFailure(f, setup, {
      maxReplays: a.shrinkReplays,
      onProgress: (n, _max, ops) => bar?.tick(n, `${plural(ops, 'op')} of ${f.log.length}`),
    });
  } finally {
    bar?.stop();
  }
  const path = shrunkPath(full);
  await saveOplog(path, r.ops);
  // Under --inject-rate the shrunk log meets other faults: replay it once more for the ones it meets.
  const inject = a.injectRate > 0 ? (await stressReplay(r.ops, setup))?.inject : undefined;
  const command = replayCommand(path, { ...replaySetup, ...(inject ? { inject } : {}) });
  const bound = r.bounded ? `; stopped at --shrink-replays ${a.shrinkReplays}` : '';
  process.stderr.write(
    `shrunk it to ${plural(r.ops.length, 'op')} that still fail with ${f.code} ` +
      `(${plural(r.replays, 'replay')}${bound}): saved to ${path}\n` +
      `reproduce the shrunk log: ${command}\n`,
  );
  return { path, ops: r.ops.length, replays: r.replays, bounded: r.bounded, command };
}

export function registerStress(program: Command): void {
  const stress = program
    .command('stress')
    .description(
      'fsx as a command: seeded random op logs applied to fresh files, checked against the reference ' +
        'model and the invariants after every op; the first failure is saved as an op log with the ' +
        '`hmmlab replay --check` command that reproduces it',
    )
    .option('--ops <n>', `ops a run (default ${STRESS_DEFAULTS.ops})`)
    .option('--seed <n>', 'seed of the first run, 0..2^31-1; run k uses seed+k (default: random, printed)')
    .option('--runs <n>', `runs, each on a fresh file and mount (default ${STRESS_DEFAULTS.runs})`)
    .option('--device', 'generate device ops (devread, devwrite): the default with a device policy')
    .option('--no-device', 'generate no device ops (the device policy still runs)')
    .option('--policy <name>', POLICY_HELP, 'mirror')
    .option('--page-size <bytes>', 'page size, a power of two from 4K to 2M (default 4096)')
    .option(
      '--host-pages <n>',
      `host page budget: reclaim runs past it (default ${STRESS_DEFAULTS.hostPages})`,
    )
    .option(
      '--device-pages <n>',
      `device frames (GPU memory, in pages): eviction runs past it (default ${STRESS_DEFAULTS.devicePages})`,
    )
    .option('--batch <n>', `device faults serviced per batch (default ${STRESS_DEFAULTS.batch})`)
    .option('--blocks <n>', 'block budget of the filesystem: writes past it fail with ENOSPC (a failure)')
    .option(
      '--max-file-size <bytes>',
      `writes, truncates and direct I/O stay below it (default ${STRESS_DEFAULTS.filePages} pages)`,
    )
    .option(
      '--save-ops <file>',
      'write the failing log here (default: a file in the temporary directory named with the seed), ' +
        'and the shrunk one next to it (FILE.min.jsonl); with no failure, the whole log of the last run',
    )
    .option('--no-shrink', 'save the failing log as it is, without shrinking it')
    .option(
      '--shrink-replays <n>',
      `replays the shrinking of a failing log may take, each on a fresh mount (default ${STRESS_DEFAULTS.shrinkReplays})`,
    )
    .option(
      '--dir <dir>',
      "directory for the backing file DIR/oplog.dat (each run replaces it; the last run's is kept); " +
        'an existing oplog.dat there is an error (EEXIST)',
    )
    .option('--overwrite', 'with --dir: replace an existing DIR/oplog.dat')
    .option('--json', 'print one JSON summary object on stdout and nothing else there')
    .option('--stats', 'print the vmstat counters added up over the runs to stderr at the end')
    .option(
      '--stats-json <file>',
      'write every counter and the fault batches (in time order, each with its run and op line) to FILE as JSON',
    )
    .option(
      '--cpu-threads <n>',
      'run the ops from N CPU worker threads (syscalls and mapping accesses from the workers; while one ' +
        'runs an op the others load stable pages through their mappings and check them); with --concurrent: ' +
        `the CPU threads beside the kernels (default ${CONCURRENT_DEFAULTS.cpuThreads})`,
    )
    .option(
      '--concurrent',
      'device kernels and CPU worker threads on the same pages at once for --duration seconds: atomic ' +
        'increments of counters and stores to per-thread slots from both sides, with reclaim, device ' +
        'eviction and fsync beside them; every counter, slot and the disk checked at the end',
    )
    .option(
      '--device-threads <n>',
      `with --concurrent: device threads of each kernel (default ${CONCURRENT_DEFAULTS.deviceThreads})`,
    )
    .option(
      '--duration <seconds>',
      `with --concurrent: how long it runs (default ${CONCURRENT_DEFAULTS.durationS})`,
    )
    .option(
      '--trace <pages>',
      'one line on stderr per event that touches these pages of each run (e.g. 0-3,7): the seed, op line, ' +
        "event, the page's state before and after (A host, A' device, CPU) and the work done",
    )
    .option(
      '--inject-rate <p>',
      'fail every attempt at a transient fault-injection point with probability p (seeded with the ' +
        "run's seed); each op a fault failed is run again until it passes, the checks are those of a run " +
        'without faults; the summary counts the faults that fired, by point (docs/fault-injection.md)',
    );
  addOpMixOptions(stress)
    .addHelpText(
      'after',
      '\nExamples:\n  hmmlab stress --ops 500 --runs 3 --seed 7 --host-pages 8 --device-pages 8 --no-dio\n' +
        '  hmmlab stress --seed 1 --ops 2000 --cpu-threads 2\n' +
        '  hmmlab stress --concurrent --device-threads 20000 --cpu-threads 2 --duration 15 --policy migrate',
    )
    .action(async (opts: StressCliOptions, cmd: Command) => {
      if (opts.concurrent) return runConcurrent(opts, cmd);
      for (const flag of ['deviceThreads', 'duration'] as const) {
        if (opts[flag] !== undefined)
          throw new HmmlabError(
            'EINVAL',
            `--${flag === 'duration' ? 'duration' : 'device-threads'} goes with --concurrent`,
          );
      }
      const a = parseStressArgs(opts, cmd.getOptionValueSource('device') === 'cli');
      // Loaded here so that other commands do not load the page cache or the GPU.
      const { defaultFailurePath, RATE_RETRIES, replayCommand, saveOplog, shrunkPath, stressRuns } =
        await import('../oplog/stress.ts');
      // Every path the run will write is checked before it starts: a long run must not end in a
      // failure report that cannot be saved.
      if (a.saveOps !== undefined) {
        checkOutputFile('--save-ops', a.saveOps);
        if (a.shrinkReplays > 0) checkOutputFile('--save-ops', shrunkPath(a.saveOps));
      }
      if (a.statsJson !== undefined) checkOutputFile('--stats-json', a.statsJson);
      if (a.dir !== undefined) checkBackingDir(a.dir, 'oplog.dat', a.overwrite);
      // The seed first, before anything can fail: whatever happens, the run can be repeated.
      const header = `stress: seed ${a.seed} (--seed ${a.seed} repeats it); ${setupText(a)}`;
      if (a.json) process.stderr.write(`${header}\n`);
      else process.stdout.write(`${header}\n`);

      const { openCommandPolicy } = await import('./policy.ts');
      // One GPU for all runs; each run (and each replay of the shrinking) gets fresh device memory.
      const host = await openCommandPolicy(cmd, a.policy, a);
      const batches = new FaultBatchCollector(a.pageSize);
      const setup = {
        pageSize: a.pageSize,
        hostPages: a.hostPages,
        blocks: a.blocks,
        injectRate: a.injectRate,
        cpuThreads: a.cpuThreads || undefined,
        maxFileSize: a.maxFileSize,
      };
      const replaySetup = {
        policy: a.policy,
        pageSize: a.pageSize,
        hostPages: a.hostPages,
        devicePages: a.devicePages,
        batch: a.batch,
        blocks: a.blocks,
        maxFileSize: a.maxFileSize,
        retries: a.injectRate > 0 ? RATE_RETRIES : undefined,
        cpuThreads: a.cpuThreads || undefined,
      };
      const bar = opsProgressBar('stress', a.runs * a.ops);
      let result: StressResult;
      let saved: string | undefined;
      let command: string | undefined;
      let shrunk: Shrunk | null = null;
      try {
        try {
          result = await stressRuns({
            seed: a.seed,
            runs: a.runs,
            ops: a.ops,
            device: a.device,
            ...setup,
            maxFileSize: a.maxFileSize,
            weights: a.weights,
            dir: a.dir,
            policyFor: async () => {
              const mount = await host.forMount();
              batches.attach(mount.batchLog);
              return {
                policy: mount.policy,
                close: () => {
                  batches.collect();
                  mount.close();
                },
              };
            },
            onProgress: bar ? (done, _total, seed) => bar.tick(done, seed) : undefined,
            trace: a.trace ?? undefined,
            onTrace: (e, seed) => {
              bar?.clearLine();
              process.stderr.write(`${formatTraceEvent(e, `seed ${seed} `)}\n`);
            },
            beforeOp: (run, seed, line, op) => {
              batches.opStarts(line, op, { run, seed });
              setReproduceHint(
                `stress --seed ${seed} --runs 1 with the same options, line ${line}: ${formatOp(op)}`,
              );
            },
          });
        } finally {
          bar?.stop();
        }

        const f = result.failure;
        if (f) {
          // The report first: whatever happens next (saving, shrinking), it has been said.
          process.stderr.write(`${failureText(f, a.runs)}\n`);
          process.exitCode = 1;
          saved = a.saveOps ?? defaultFailurePath(f.seed);
          await saveOplog(saved, f.log);
          command = replayCommand(saved, { ...replaySetup, inject: f.inject });
          process.stderr.write(
            `saved the log up to and including line ${f.line} (${plural(f.log.length, 'op')}) to ${saved}\n` +
              `reproduce: ${command}\n`,
          );
          if (a.shrinkReplays > 0 && f.log.length > 1) {
            const forMount = () => host.forMount();
            shrunk = await shrinkAndSave(
              a,
              f,
              saved,
              { ...setup, seed: f.seed, policyFor: forMount },
              replaySetup,
            );
          }
        } else if (a.saveOps) {
          saved = a.saveOps;
          await saveOplog(saved, result.lastLog);
        }
      } finally {
        host.close();
      }

      const f = result.failure;
      if (a.json) process.stdout.write(`${JSON.stringify(summaryJson(a, result, saved, command, shrunk))}\n`);
      else if (!f) {
        process.stdout.write(`${summaryText(a, result)}\n`);
        if (saved) {
          process.stdout.write(
            `saved the log of the last run (seed ${result.runs.at(-1)?.seed}, ${plural(result.lastLog.length, 'op')}) to ${saved}\n`,
          );
        }
      }
      if (a.stats || a.statsJson !== undefined) {
        const s = { counters: result.vmstat, gauges: result.gauges };
        const device = policyHasDevice(a.policy) ? batches.batches : null;
        if (a.stats) process.stderr.write(`${formatStats(s, device)}\n`);
        if (a.statsJson !== undefined) {
          const failure = f ? { code: errorCode(f.error), message: errorMessage(f.error) } : null;
          await writeStatsJson(a.statsJson, 'stress', s, batches.batches, failure);
        }
      }
    });
}
