/**
 * The fsx-style stress run behind `hmmlab stress`: seeded random op logs (generate.ts), each applied
 * to a fresh file with the reference model checking every read and the disk (replay's check mode)
 * and the invariant checker after every op, for `runs` runs with seeds seed, seed+1, ...
 *
 * The first failure stops the whole run: it comes back as a `StressFailure` holding the seed, the
 * failing op's line, the reason and the log up to and including that op (a failure of the end check
 * keeps the whole log), which `saveOplog` writes and `replayCommand` turns into the `hmmlab replay
 * --check` command line that reproduces it. `shrinkFailure` shrinks that log (shrink.ts) by
 * replaying smaller logs the same way, each on a fresh mount. Nothing here prints: the CLI
 * (src/cli/stress.ts) does.
 */

import { writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { errorMessage, isHmmlabError } from '../errors.ts';
import type { HmmFs } from '../fs/hmmfs.ts';
import { FaultInjector, INJECT_POINTS, type InjectPoint } from '../inject/inject.ts';
import { DEFAULT_MAX_FILE_SIZE } from '../mm/args.ts';
import { type PageSet, PageTracer, type TraceEvent } from '../mm/trace.ts';
import { checkInvariants } from '../policy/invariants.ts';
import type { CoherencePolicy } from '../policy/policy.ts';
import { isGauge } from './counters.ts';
import { generateOplog, SEED_LIMIT } from './generate.ts';
import { ReplayMismatch, replayOplog } from './replay.ts';
import { type Op, type OpName, serializeOplog } from './schema.ts';
import { type ShrinkResult, shrinkOplog } from './shrink.ts';

/** Run r uses (seed + r) mod SEED_LIMIT. */
export { SEED_LIMIT };

/** The counters the summary adds up over runs: CPU and device faults, host reclaim, device eviction. */
export const STRESS_COUNTERS = [
  'pgfault',
  'pgmajfault',
  'pgsteal_direct',
  'workingset_refault_file',
  'workingset_device_entry',
  'nr_written',
  'device_faults',
  'device_faults_unique',
  'device_fault_batches',
  'device_evictions',
  'device_revocations',
  'device_shootdowns',
] as const;
export type StressCounter = (typeof STRESS_COUNTERS)[number];

/** The policy a run mounts with (none: host only), and how to free what it holds (mirror: its DeviceMemory). */
export interface StressPolicy {
  policy?: CoherencePolicy;
  close(): void;
}

export interface StressOptions {
  seed: number;
  runs: number;
  /** Ops a run. */
  ops: number;
  /** Generate devread/devwrite (they need a policy with a device). */
  device: boolean;
  pageSize: number;
  hostPages: number;
  blocks?: number;
  /** Writes, truncates and direct I/O of the generated logs stay within this size. */
  maxFileSize: number;
  /** Relative weight of each op in the generated logs (0 leaves it out; generate.ts's defaults). */
  weights?: Partial<Record<OpName, number>>;
  /** Directory of the backing file (default: a fresh temporary one per run, removed after it). */
  dir?: string;
  /** Run the file ops from this many CPU worker threads (ReplayOptions.cpuThreads; default none). */
  cpuThreads?: number;
  /** A fresh policy for each run (default: host-only); made before the run's first op. */
  policyFor?: () => Promise<StressPolicy>;
  /**
   * Every attempt at a transient fault-injection point fails with this probability (seeded with
   * the run's seed); each op a fault failed is run again until it passes, and the checks are those
   * of a run without faults. The invariants are checked after every failed attempt too.
   */
  injectRate?: number;
  /** Told about every injected fault as it fires. */
  onInjected?: (point: InjectPoint, line: number) => void;
  /** --trace: the pages of each run's file whose every event is reported to onTrace. */
  trace?: PageSet;
  onTrace?: (e: TraceEvent, seed: number) => void;
  /** Called after every op that passed its checks: ops done over all runs, their total, the run's seed. */
  onProgress?: (done: number, total: number, seed: number) => void;
  /** Called before each op: the run (0-based), its seed, the op's line (the CLI tags fault batches). */
  beforeOp?: (run: number, seed: number, line: number, op: Op) => void;
}

export interface StressRun {
  seed: number;
  ops: number;
  reads: number;
  diskChecks: number;
  /** The file at the end of the run, as docs/oplog.md's end line has it: same seed, same file. */
  size: number;
  sha256: string;
  elapsedMs: number;
}

export interface StressFailure {
  /** The seed of the failing run. */
  seed: number;
  /** 0-based index of the failing run. */
  run: number;
  /** 1-based line of the failing op in the run's log (the last op's for the end check). */
  line: number;
  /** The failing op (null when the end check after the final unmount failed). */
  op: Op | null;
  /** The error code (EIO for a difference from the model); 'EINTERNAL' for an error hmmlab did not expect. */
  code: string;
  reason: string;
  /** The log up to and including the failing op: replaying it with --check fails the same way. */
  log: Op[];
  /** The error itself (a non-HmmlabError keeps its stack). */
  error: unknown;
  /** The injected faults that fired in the failing run, as `--inject` takes them (POINT@K,...). */
  inject?: string;
}

/** The settings a log is replayed with, as a stress run replays it (check mode, invariants). */
export type StressReplaySetup = Pick<
  StressOptions,
  'pageSize' | 'hostPages' | 'blocks' | 'policyFor' | 'cpuThreads'
> & {
  /** The run's --max-file-size: the replay's mount holds what the run's log writes. */
  maxFileSize?: number;
  /** --inject-rate, seeded with `seed` (the failing run's): the replay meets faults as the run did. */
  injectRate?: number;
  seed?: number;
};

export interface StressResult {
  options: Omit<StressOptions, 'policyFor' | 'onProgress'>;
  runs: StressRun[];
  /** Ops that passed their checks, over all runs. */
  ops: number;
  elapsedMs: number;
  counters: Record<StressCounter, number>;
  /**
   * Every event counter of vmstat (src/mm and the policy's), added up over the runs: those that
   * passed after their final unmount, a failing one as it stood when it failed.
   */
  vmstat: Record<string, number>;
  /** The gauges (nr_file_pages, device_frames_used, ...) of the last run, before its final unmount. */
  gauges: Record<string, number>;
  failure: StressFailure | null;
  /** The whole log of the last run (--save-ops without a failure saves it). */
  lastLog: Op[];
  /** Injected faults fired, by point, over all runs (--inject-rate). */
  injected: Record<InjectPoint, number>;
  /** Attempts that an injected fault made fail and that were run again. */
  retriedOps: number;
  /** Ops whose file ops came from CPU worker threads (--cpu-threads), over all runs. */
  workerOps: number;
  /** Loads of pages an op left alone that the other workers made and checked meanwhile. */
  watchLoads: number;
}

/** Attempts of one op under --inject-rate before the run counts it as failed (each is a fresh draw). */
export const RATE_RETRIES = 100;

/** Gauges say how things stand after a run; adding them up over runs means nothing. */
export { isGauge };

/** Run r's seed. */
export const runSeed = (seed: number, run: number): number => (seed + run) % SEED_LIMIT;

/** The generated log of one run: the same seed and options always give the same ops. */
export function stressOplog(
  o: Pick<StressOptions, 'ops' | 'device' | 'pageSize' | 'maxFileSize' | 'weights'>,
  seed: number,
): Op[] {
  return generateOplog({
    seed,
    ops: o.ops,
    device: o.device,
    pageSize: o.pageSize,
    maxFileSize: o.maxFileSize,
    weights: o.weights,
  });
}

/** The gauges of a vmstat, and its event counters. */
function splitVmstat(v: Record<string, number>): {
  events: Record<string, number>;
  gauges: Record<string, number>;
} {
  const events: Record<string, number> = {};
  const gauges: Record<string, number> = {};
  for (const [k, x] of Object.entries(v)) (isGauge(k) ? gauges : events)[k] = x;
  return { events, gauges };
}

function failureOf(e: unknown, log: Op[], done: number, seed: number, run: number): StressFailure {
  // Ops before `done` passed every check; the op at `done` failed (in the op, the model compare, the
  // disk check or the invariants). A failing end check or final unmount is past the last op.
  const atEnd = (e instanceof ReplayMismatch && e.op.op === 'end') || done >= log.length;
  const k = atEnd ? log.length - 1 : done;
  return {
    seed,
    run,
    line: k + 1,
    op: atEnd ? null : log[k],
    code: isHmmlabError(e) ? e.code : 'EINTERNAL',
    reason: isHmmlabError(e)
      ? `${e.code}: ${e.message}`
      : `EINTERNAL: ${(e as Error)?.name ?? 'Error'}: ${errorMessage(e)} (a bug in hmmlab)`,
    log: log.slice(0, k + 1),
    error: e,
  };
}

export async function stressRuns(options: StressOptions): Promise<StressResult> {
  const { policyFor, onProgress, onInjected, beforeOp, onTrace, ...rest } = options;
  const injected = Object.fromEntries(INJECT_POINTS.map((p) => [p, 0])) as Record<InjectPoint, number>;
  let retriedOps = 0;
  let workerOps = 0;
  let watchLoads = 0;
  const t0 = performance.now();
  const total = options.runs * options.ops;
  const counters = Object.fromEntries(STRESS_COUNTERS.map((k) => [k, 0])) as Record<StressCounter, number>;
  const vmstat: Record<string, number> = {};
  let gauges: Record<string, number> = {};
  const addUp = (v: Record<string, number>) => {
    const split = splitVmstat(v);
    for (const [k, x] of Object.entries(split.events)) vmstat[k] = (vmstat[k] ?? 0) + x;
    gauges = split.gauges;
  };
  const runs: StressRun[] = [];
  let opsDone = 0;
  let lastLog: Op[] = [];
  let failure: StressFailure | null = null;
  for (let r = 0; r < options.runs && !failure; r++) {
    const seed = runSeed(options.seed, r);
    const log = stressOplog(options, seed);
    lastLog = log;
    // The policy is set up outside the failure path: an adapter that cannot be opened is the
    // user's error (exit as such), not a failing op.
    const held = policyFor ? await policyFor() : null;
    let done = 0;
    const inject = options.injectRate
      ? new FaultInjector({
          rate: options.injectRate,
          seed,
          onFire: (f) => {
            injected[f.point]++;
            onInjected?.(f.point, f.line);
          },
        })
      : undefined;
    const trace = options.trace ? new PageTracer(options.trace, (e) => onTrace?.(e, seed)) : undefined;
    let before: Record<string, number> = {};
    try {
      const res = await replayOplog(log, {
        pageSize: options.pageSize,
        hostPages: options.hostPages,
        blocks: options.blocks,
        dir: options.dir,
        cpuThreads: options.cpuThreads,
        // The mount's file-size limit holds what the generator writes (1 GiB at least, as by default).
        mount: { maxFileSize: Math.max(DEFAULT_MAX_FILE_SIZE, options.maxFileSize) },
        policy: held?.policy,
        check: true,
        inject,
        trace,
        retries: RATE_RETRIES,
        onRetry: () => {
          retriedOps++;
        },
        afterFailedAttempt: (fs: HmmFs) => checkInvariants(fs),
        beforeOp: beforeOp ? (line, op) => beforeOp(r, seed, line, op) : undefined,
        afterOp: async (fs: HmmFs) => {
          await checkInvariants(fs);
          done++;
          opsDone++;
          onProgress?.(opsDone, total, seed);
        },
        beforeUnmount: (fs) => {
          before = fs.vmstat();
        },
      });
      for (const k of STRESS_COUNTERS) counters[k] += res.vmstat[k] ?? 0;
      workerOps += res.workerOps;
      watchLoads += res.watchLoads;
      addUp({ ...res.vmstat, ...splitVmstat(before).gauges });
      runs.push({
        seed,
        ops: res.ops,
        reads: res.reads.length,
        diskChecks: res.diskChecks,
        size: res.end.size,
        sha256: res.end.sha256,
        elapsedMs: res.elapsedMs,
      });
    } catch (e) {
      failure = failureOf(e, log, done, seed, r);
      if (inject?.log.length) failure.inject = inject.log.map((f) => `${f.point}@${f.nth}`).join(',');
      addUp(before); // as the failing run stood when it failed (before its unmount)
      for (const k of STRESS_COUNTERS) counters[k] += before[k] ?? 0;
    } finally {
      held?.close();
    }
  }
  return {
    options: rest,
    runs,
    ops: opsDone,
    elapsedMs: performance.now() - t0,
    counters,
    vmstat,
    gauges,
    failure,
    lastLog,
    injected,
    retriedOps,
    workerOps,
    watchLoads,
  };
}

/**
 * Replay `log` once as a stress run does (check mode, the invariants after every op, a fresh
 * policy and mount): null when it passes, else the error code and the 0-based index of the op that
 * failed (the last op's for the end check).
 */
export async function stressReplay(
  log: readonly Op[],
  setup: StressReplaySetup,
): Promise<{ code: string; index: number; inject?: string } | null> {
  const held = setup.policyFor ? await setup.policyFor() : null;
  const inject = setup.injectRate
    ? new FaultInjector({ rate: setup.injectRate, seed: setup.seed })
    : undefined;
  let done = 0;
  try {
    await replayOplog(log, {
      pageSize: setup.pageSize,
      hostPages: setup.hostPages,
      blocks: setup.blocks,
      cpuThreads: setup.cpuThreads,
      mount: { maxFileSize: Math.max(DEFAULT_MAX_FILE_SIZE, setup.maxFileSize ?? DEFAULT_MAX_FILE_SIZE) },
      policy: held?.policy,
      check: true,
      inject,
      retries: RATE_RETRIES,
      afterFailedAttempt: (fs: HmmFs) => checkInvariants(fs),
      afterOp: async (fs: HmmFs) => {
        await checkInvariants(fs);
        done++;
      },
    });
    return null;
  } catch (e) {
    const f = failureOf(e, [...log], done, 0, 0);
    const fired = inject?.log.map((x) => `${x.point}@${x.nth}`).join(',');
    return { code: f.code, index: f.line - 1, ...(fired ? { inject: fired } : {}) };
  } finally {
    held?.close();
  }
}

/**
 * Shrink a stress failure's log: the smallest log found within `maxReplays` replays that still
 * fails with the same error code, each replay on a fresh mount with the run's settings.
 */
export function shrinkFailure(
  f: StressFailure,
  setup: StressReplaySetup,
  o: { maxReplays?: number; onProgress?: (replays: number, max: number, ops: number) => void } = {},
): Promise<ShrinkResult> {
  return shrinkOplog(f.log, {
    maxReplays: o.maxReplays,
    onProgress: o.onProgress,
    fails: async (ops) => {
      const r = await stressReplay(ops, setup);
      return r && r.code === f.code ? r.index : null;
    },
  });
}

/** Where a failing run's log goes when --save-ops names no file: os.tmpdir(), named with the seed. */
export function defaultFailurePath(seed: number): string {
  return join(tmpdir(), `hmmlab-stress-seed${seed}.jsonl`);
}

export async function saveOplog(path: string, ops: readonly Op[]): Promise<void> {
  await writeFile(path, serializeOplog(ops));
}

/** Where the shrunk log of a failure goes, next to the full one: x.jsonl -> x.min.jsonl. */
export function shrunkPath(path: string): string {
  const m = /^(.*?)(\.jsonl|\.json|\.log|\.txt)?$/.exec(path)!;
  return `${m[1]}.min${m[2] ?? '.jsonl'}`;
}

/** A word for a POSIX shell: kept bare when safe, else single-quoted. */
export function shellWord(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", "'\\''")}'`;
}

export interface ReplaySetup {
  /** A policy name of src/policy/registry.ts. */
  policy: string;
  /** The faults that fired in the failing run (`POINT@K` each), replayed with --inject. */
  inject?: string;
  /** Attempts of an op that an injected fault failed (replay --retries). */
  retries?: number;
  pageSize: number;
  hostPages: number;
  devicePages?: number;
  batch?: number;
  blocks?: number;
  /** The generator's file-size limit: replay needs it past the 1 GiB default. */
  maxFileSize?: number;
  /** The ops ran from this many CPU worker threads (replay --cpu-threads). */
  cpuThreads?: number;
}

/** The `hmmlab replay --check` command line that replays `path` as the stress run did. */
export function replayCommand(path: string, s: ReplaySetup): string {
  const args = ['npx', 'hmmlab', 'replay', shellWord(path), '--check', '--policy', s.policy];
  args.push('--page-size', String(s.pageSize), '--host-pages', String(s.hostPages));
  if (s.policy !== 'none') {
    if (s.devicePages !== undefined) args.push('--device-pages', String(s.devicePages));
    if (s.batch !== undefined) args.push('--batch', String(s.batch));
  }
  if (s.blocks !== undefined) args.push('--blocks', String(s.blocks));
  if (s.maxFileSize !== undefined && s.maxFileSize > DEFAULT_MAX_FILE_SIZE) {
    args.push('--max-file-size', String(s.maxFileSize));
  }
  if (s.cpuThreads) args.push('--cpu-threads', String(s.cpuThreads));
  if (s.inject) args.push('--inject', s.inject, '--retries', String(s.retries ?? 1));
  return args.join(' ');
}
