/**
 * `hmmlab stress --concurrent`: device kernels and CPU worker threads on the same pages at once
 * (src/stress/concurrent.ts), for --duration seconds, under --policy (a device policy). The seed
 * comes first; a progress bar (seconds) runs on stderr; the summary (or, with --json, one object on
 * stdout) says what both sides did, that every check held, and what shows the races were real
 * (CPU accesses made while kernels ran, mmu_interval retries, shootdown waits). Any violation is
 * printed naming the page, its state on both sides and the seed, with the command that repeats the
 * run; exit status 1.
 */
import type { Command } from 'commander';
import { formatBytes, parseCount, parsePageSize, plural } from '../bench/units.ts';
import { HmmlabError } from '../errors.ts';
import type { ConcurrentResult, Violation } from '../stress/concurrent.ts';
import { setReproduceHint } from './exit.ts';
import { parsePolicy, policyHasDevice } from './policy.ts';
import { stepsProgressBar } from './progress.ts';
import { parseSeed } from './workload.ts';

export const CONCURRENT_DEFAULTS = {
  deviceThreads: 20_000,
  cpuThreads: 2,
  durationS: 10,
  hostPages: 16,
  devicePages: 16,
  batch: 256,
};

/** The options of the fsx mode that a concurrent run has no use for: given, they are an error. */
const FSX_ONLY = [
  ['ops', '--ops'],
  ['runs', '--runs'],
  ['injectRate', '--inject-rate'],
  ['saveOps', '--save-ops'],
  ['shrinkReplays', '--shrink-replays'],
  ['blocks', '--blocks'],
  ['maxFileSize', '--max-file-size'],
  ['statsJson', '--stats-json'],
] as const;

export interface ConcurrentArgs {
  seed: number;
  policy: ReturnType<typeof parsePolicy>;
  deviceThreads: number;
  cpuThreads: number;
  durationS: number;
  pageSize: number;
  hostPages: number;
  devicePages: number;
  batch: number;
  dir?: string;
  json: boolean;
}

function parseDuration(text: string | undefined): number {
  if (text === undefined) return CONCURRENT_DEFAULTS.durationS;
  const m = /^\s*(\d+(?:\.\d+)?)\s*s?\s*$/.exec(text);
  const s = m ? Number(m[1]) : Number.NaN;
  if (!(s > 0 && s <= 3600)) {
    throw new HmmlabError(
      'EINVAL',
      `bad --duration "${text}": expected seconds, more than 0 and at most 3600`,
    );
  }
  return s;
}

export function parseConcurrentArgs(o: Record<string, unknown>): ConcurrentArgs {
  for (const [key, flag] of FSX_ONLY) {
    if (o[key] !== undefined)
      throw new HmmlabError(
        'EINVAL',
        `${flag} does not go with --concurrent (a concurrent run lasts --duration)`,
      );
  }
  const policy = parsePolicy(o.policy as string | undefined);
  if (!policyHasDevice(policy)) {
    throw new HmmlabError(
      'EINVAL',
      '--concurrent needs a device policy (mirror or migrate): the kernels run on the GPU',
    );
  }
  if (o.device === false) throw new HmmlabError('EINVAL', '--no-device does not go with --concurrent');
  const str = (k: string) => o[k] as string | undefined;
  const deviceThreads = parseCount(
    '--device-threads',
    str('deviceThreads'),
    CONCURRENT_DEFAULTS.deviceThreads,
  );
  if (deviceThreads > 1 << 20)
    throw new HmmlabError(
      'EINVAL',
      `bad --device-threads ${deviceThreads}: at most ${1 << 20} (a slot value names its thread in 20 bits)`,
    );
  return {
    seed: parseSeed(str('seed')),
    policy,
    deviceThreads,
    cpuThreads: parseCount('--cpu-threads', str('cpuThreads'), CONCURRENT_DEFAULTS.cpuThreads),
    durationS: parseDuration(str('duration')),
    pageSize: parsePageSize(str('pageSize'), 4096),
    hostPages: parseCount('--host-pages', str('hostPages'), CONCURRENT_DEFAULTS.hostPages),
    devicePages: parseCount('--device-pages', str('devicePages'), CONCURRENT_DEFAULTS.devicePages),
    batch: parseCount('--batch', str('batch'), CONCURRENT_DEFAULTS.batch),
    dir: str('dir'),
    json: o.json === true,
  };
}

/** The command line that runs the same workload again (the interleaving is the machine's). */
export function concurrentCommand(a: ConcurrentArgs): string {
  return [
    'npx hmmlab stress --concurrent',
    `--policy ${a.policy}`,
    `--device-threads ${a.deviceThreads}`,
    `--cpu-threads ${a.cpuThreads}`,
    `--duration ${a.durationS}`,
    `--page-size ${a.pageSize}`,
    `--host-pages ${a.hostPages}`,
    `--device-pages ${a.devicePages}`,
    `--batch ${a.batch}`,
    `--seed ${a.seed}`,
  ].join(' ');
}

const n = (x: number) => x.toLocaleString('en-US');

/** A violation in one line: what, and the page's state on both sides when it was found. */
export function violationText(v: Violation): string {
  const s = v.state;
  const where = s
    ? `; page ${s.index}: host ${s.host}${s.flags ? ` (${s.flags})` : ''}, cpu ${s.cpu}, device ${s.dev}` +
      (s.frame === null ? '' : ` frame ${s.frame}${s.devDirty ? ' dirty' : ''}`)
    : v.page === undefined
      ? ''
      : `; page ${v.page}`;
  return `${v.kind}: ${v.message}${where}`;
}

function summaryText(a: ConcurrentArgs, r: ConcurrentResult): string {
  return [
    `concurrent stress passed in ${(r.durationMs / 1000).toFixed(1)} s: ${n(r.atomicKernels + r.slotKernels)} kernels ` +
      `(${n(r.atomicKernels)} atomic, ${n(r.slotKernels)} slot stores) of ${n(a.deviceThreads)} device threads beside ` +
      `${plural(a.cpuThreads, 'cpu thread')}; ${n(r.deviceIncrements)} device + ${n(r.cpuIncrements)} cpu increments, ` +
      `every counter and slot as written, the disk matches after fsync and remount, invariants held at ${plural(r.invariantChecks, 'check')}`,
    `races: ${n(r.cpuAccessesDuringKernels)} of ${n(r.cpuAccesses)} cpu accesses made while a kernel ran, ` +
      `${n(r.mmuIntervalRetries)} mmu_interval retries, ${n(r.shootdownWaits)} shootdown waits (of ${n(r.cpuShootdowns)} cpu shootdowns); ` +
      `${n(r.cpuSyscalls)} syscalls, ${n(r.cpuFaults)} cpu faults, host reclaim ${n(r.hostReclaim)} pages, ` +
      `device evictions ${n(r.deviceEvictions)}, ${plural(r.fsyncs, 'fsync')}, ${r.dropCaches} drop_caches`,
  ].join('\n');
}

/** The JSON object of --json: every figure of the run, its violations and the command that repeats it. */
export function concurrentJson(a: ConcurrentArgs, r: ConcurrentResult) {
  const { violations, ...rest } = r;
  return {
    ...rest,
    devicePages: a.devicePages,
    batch: a.batch,
    passed: violations.length === 0,
    violations: violations.map((v) => ({ ...v, text: violationText(v) })),
    command: concurrentCommand(a),
  };
}

export async function runConcurrent(opts: Record<string, unknown>, cmd: Command): Promise<void> {
  const a = parseConcurrentArgs(opts);
  const header =
    `stress --concurrent: seed ${a.seed} (--seed ${a.seed} repeats the workload); policy ${a.policy}, ` +
    `${n(a.deviceThreads)} device threads, ${plural(a.cpuThreads, 'cpu thread')}, ${a.durationS} s, ` +
    `page size ${formatBytes(a.pageSize)}, ${plural(a.hostPages, 'host page')}, ${plural(a.devicePages, 'device page')}`;
  if (a.json) process.stderr.write(`${header}\n`);
  else process.stdout.write(`${header}\n`);
  setReproduceHint(concurrentCommand(a));
  const { openCommandPolicy } = await import('./policy.ts');
  const { runConcurrentStress } = await import('../stress/concurrent.ts');
  const host = await openCommandPolicy(cmd, a.policy, a);
  const total = Math.ceil(a.durationS);
  const bar = stepsProgressBar('concurrent', 's', total);
  let r: ConcurrentResult;
  try {
    const mount = await host.forMount();
    try {
      r = await runConcurrentStress({
        seed: a.seed,
        deviceThreads: a.deviceThreads,
        cpuThreads: a.cpuThreads,
        durationMs: a.durationS * 1000,
        pageSize: a.pageSize,
        hostPages: a.hostPages,
        policy: mount.policy!,
        dir: a.dir,
        onProgress: (ms, kernels) =>
          bar?.tick(Math.min(total, Math.floor(ms / 1000)), `${n(kernels)} kernels | seed ${a.seed}`),
      });
    } finally {
      mount.close();
    }
  } finally {
    bar?.stop();
    host.close();
  }
  if (r.violations.length) {
    process.exitCode = 1;
    const lines = [
      `stress --concurrent FAILED: seed ${a.seed}, policy ${a.policy}: ${plural(r.violations.length, 'violation')}` +
        (r.planted ? ` (planted bug ${r.planted} is on)` : ''),
      ...r.violations.slice(0, 12).map(violationText),
      `repeat: ${concurrentCommand(a)}`,
    ];
    process.stderr.write(`${lines.join('\n')}\n`);
  }
  if (a.json) process.stdout.write(`${JSON.stringify(concurrentJson(a, r))}\n`);
  else if (!r.violations.length) process.stdout.write(`${summaryText(a, r)}\n`);
}
