/**
 * What device faults cost under the real coherence policies, side by side with an explicit
 * prefetch and with the floor (the kernel alone on pages already mapped): `hmmlab bench faults`.
 *
 * Each row is a way of getting `pages` cached pages of a file written (or read) by a device kernel,
 * under one policy (mirror or migrate: the fault service is the policy's own, as a real mount runs
 * it), every row naming its policy:
 *   fault-write     devwrite, every page faults: fetch, coalesce, service in batches, replay
 *   prefetch-write  File.devicePrefetch(write) of the range, then the devwrite (no faults); both timed
 *   mapped-write    the devwrite alone, every page prefetched beforehand (untimed): the floor
 *   fault-read      devread, every page faults (read faults, read-only PTEs)
 *   prefetch-read   devicePrefetch (read-only), then the devread
 *   batch-write     fault-write for each fault batch size of the sweep
 *   replay-write    fault-write under each replay policy (NVIDIA UVM's four)
 *   thrash-write    fault-write with a device pool of half the pages: eviction through the policy
 *   large-*         fault-write and prefetch-write over `largeBytes` (64 MiB) of pages
 *
 * A sample mounts the files afresh, reads them whole (the pages are cached, clean; untimed), runs
 * the access (timed), then checks the data: a devwrite's file is read back with read(2) and
 * compared with the op-log pattern, a devread's bytes with the file's; `verified` is that check's
 * result. The files are unmounted after (written back). One warm-up sample, then `iters`, the
 * median reported. Counters are the device memory's over the timed access.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  checkPageSize,
  DEFAULT_BATCH_SIZE,
  DEFAULT_REPLAY_POLICY,
  type DeviceCounters,
  DeviceMemory,
  REPLAY_POLICIES,
  type ReplayPolicy,
} from '../device/index.ts';
import { MAX_CHUNK_BYTES } from '../device/kernels.ts';
import { diffCounters } from '../device/stats.ts';
import { HmmlabError } from '../errors.ts';
import { type File, HmmFs } from '../fs/hmmfs.ts';
import type { GpuDevice } from '../gpu/device.ts';
import { patternBytes } from '../oplog/pattern.ts';
import { createDevicePolicy, DEVICE_POLICY_NAMES, type DevicePolicyName } from '../policy/registry.ts';
import { benchCopy } from './copy.ts';
import { firstDifference } from './random.ts';
import { gbps, median, summarize } from './stats.ts';
import { formatTable } from './table.ts';
import { formatBytes, numberOf, parseCount, parsePageSize } from './units.ts';

export const FAULT_MODES = [
  'fault-write',
  'prefetch-write',
  'mapped-write',
  'fault-read',
  'prefetch-read',
  'batch-write',
  'replay-write',
  'thrash-write',
  'large-fault-write',
  'large-prefetch-write',
] as const;
export type FaultMode = (typeof FAULT_MODES)[number];

export const DEFAULT_FAULT_PAGES = 4096;
export const DEFAULT_FAULT_PAGE_SIZE = 4096;
export const DEFAULT_FAULT_BATCHES = [1, 16, 64, 256, 1024];
/** Timed samples a row (after a warm-up). */
export const DEFAULT_FAULT_ITERS = 3;
/** The second size of the first-touch target: 64 MiB of pages. */
export const DEFAULT_LARGE_BYTES = 64 << 20;
/** The op-log tags: the file's bytes before any devwrite, and what every devwrite stores. */
const TAG_FILE = 1;
const TAG = 5;

export interface FaultBenchOptions {
  /** Pages of the file the kernels touch (default 4,096). */
  pages?: number;
  pageSize?: number;
  /** Fault batch sizes of the sweep (default 1, 16, 64, 256, 1024). */
  batches?: number[];
  /** The policies measured (default mirror and migrate). */
  policies?: readonly DevicePolicyName[];
  /** Replay policies of the replay rows (default UVM's four). */
  replayPolicies?: readonly ReplayPolicy[];
  /** Bytes of the large rows (default 64 MiB; 0 leaves them out, as do sizes not above `pages`). */
  largeBytes?: number;
  /**
   * Kernels run at once, each on its own slice of the pages (its own file and mount, one device
   * memory) (default 1). Their fault batches interleave on the one host thread that services them.
   */
  threads?: number;
  /** Timed samples per row (default 3). */
  iters?: number;
  /** Untimed samples before them (default 1). */
  warmup?: number;
  /** Where the files go (default: a fresh temporary directory, removed after). */
  dir?: string;
  /** Called before each sample, and once at the end with done === total. */
  onProgress?: (done: number, total: number, what: string) => void;
}

/** One row to measure. */
export interface FaultRowPlan {
  what: string;
  mode: FaultMode;
  policy: DevicePolicyName;
  kernel: 'devwrite' | 'devread';
  batchSize: number;
  replayPolicy: ReplayPolicy;
  devicePages: number;
  /** Pages this row touches (the large rows more than `pages`). */
  pages: number;
}

export interface FaultBenchRow extends FaultRowPlan {
  pageSize: number;
  threads: number;
  /** Bytes the kernels touch: pages * pageSize. */
  bytes: number;
  /** Wall time of a sample, ms: median, min, max over `samples`. */
  ms: number;
  min: number;
  max: number;
  samples: number;
  pagesPerSec: number;
  /** GB/s (10^9 bytes a second) of data touched, at the median time. */
  gbps: number;
  /** Counters of the last sample (they do not vary between samples of a single-kernel row). */
  faultsRaw: number;
  faultsUnique: number;
  batches: number;
  launches: number;
  replays: number;
  evictions: number;
  evictionsDirty: number;
  bytesHostToDevice: number;
  bytesDeviceToHost: number;
  /** Medians over samples: the launches (dispatch to fault readback), their GPU time (timestamp queries; 0 without). */
  launchMs: number;
  gpuMs: number;
  /** The batch-time breakdown: fetch (the launches' host time around the GPU's), service, copy (within service or not), replay (the relaunches). */
  fetchMs: number;
  serviceMs: number;
  copyMs: number;
  replayMs: number;
  /** Amortized fault service: serviceMs over the unique faults (us) and over the batches (ms); 0 where none. */
  usPerFault: number;
  msPerBatch: number;
  /** ms / the prefetch row's ms of the same policy and size: what faulting costs over knowing the pages in advance. */
  vsPrefetch: number;
  /** Every sample's data was read back and matched (the result of the check). */
  verified: boolean;
}

// ---- limits and options ----

/**
 * The most pages a run may use: a row's slice is read whole by devread (chunk by chunk), the host
 * holds the file's pages once and lavapipe's device memory is host memory: stay within an eighth
 * of free memory, and within one kernel chunk's limit.
 */
export function faultPagesCap(gpu: GpuDevice, pageSize: number, freeMemory: number): number {
  const bytes = Math.min(gpu.limits.maxBufferSize, Math.floor(freeMemory / 8), MAX_CHUNK_BYTES);
  return Math.floor(bytes / pageSize);
}

/** Default pages clamped to the cap; explicit pages over it are refused (ELIMIT) naming the cap. */
export function choosePages(requested: number | undefined, pageSize: number, cap: number): number {
  if (cap < 1) {
    throw new HmmlabError('ELIMIT', `bench faults: this device cannot hold one page of ${pageSize} bytes`);
  }
  if (requested === undefined) return Math.min(DEFAULT_FAULT_PAGES, cap);
  if (requested > cap) {
    throw new HmmlabError(
      'ELIMIT',
      `bench faults: --pages ${requested} of ${pageSize} bytes is over this device's limit of ${cap} pages ` +
        '(maxBufferSize, or an eighth of free host memory)',
    );
  }
  return requested;
}

/** "1,16,256" -> [1, 16, 256]: fault batch sizes, each a positive integer, none twice. */
export function parseBatchList(text: string): number[] {
  const items = text.split(',').map((s) => s.trim());
  const out: number[] = [];
  for (const item of items) {
    const n = numberOf(item);
    if (!(n >= 1)) {
      throw new HmmlabError(
        'EINVAL',
        `bad --batch "${text}": "${item}" is not a positive integer (expected a list such as 1,16,64,256)`,
      );
    }
    if (out.includes(n))
      throw new HmmlabError('EINVAL', `bad --batch "${text}": batch size ${n} named twice`);
    out.push(n);
  }
  return out;
}

/** The command's flags as commander hands them over (strings). */
export interface BenchFaultsFlags {
  json?: boolean;
  pages?: string;
  pageSize?: string;
  batch?: string;
  policy?: string;
  threads?: string;
  iters?: string;
  large?: string;
  svg?: string;
  out?: string;
}

/** Parsed flags; pages stays undefined when not given (the default is clamped to the device). */
export interface FaultBenchArgs {
  pages: number | undefined;
  pageSize: number;
  batches: number[];
  policies: DevicePolicyName[];
  threads: number;
  iters: number;
  largeBytes: number;
}

/** Parse every flag (EINVAL naming the flag), before a device is opened. */
export function parseFaultBenchArgs(flags: BenchFaultsFlags): FaultBenchArgs {
  return {
    pages: flags.pages === undefined ? undefined : parseCount('--pages', flags.pages, 0),
    pageSize: parsePageSize(flags.pageSize, DEFAULT_FAULT_PAGE_SIZE),
    batches: flags.batch === undefined ? DEFAULT_FAULT_BATCHES : parseBatchList(flags.batch),
    policies: flags.policy === undefined ? [...DEVICE_POLICY_NAMES] : parsePolicyList(flags.policy),
    threads: parseCount('--threads', flags.threads, 1),
    iters: parseCount('--iters', flags.iters, DEFAULT_FAULT_ITERS),
    largeBytes: parseCount('--large', flags.large, DEFAULT_LARGE_BYTES, 0),
  };
}

function parsePolicyList(text: string): DevicePolicyName[] {
  const out: DevicePolicyName[] = [];
  for (const p of text.split(',').map((s) => s.trim())) {
    if (!(DEVICE_POLICY_NAMES as readonly string[]).includes(p)) {
      throw new HmmlabError(
        'EINVAL',
        `bad --policy "${text}": "${p}" is not a policy with a device (${DEVICE_POLICY_NAMES.join(', ')})`,
      );
    }
    if (!out.includes(p as DevicePolicyName)) out.push(p as DevicePolicyName);
  }
  return out;
}

function checkOptions(pages: number, pageSize: number, batches: number[], threads: number, iters: number) {
  checkPageSize(pageSize);
  const positive = (what: string, n: number) => {
    if (!Number.isSafeInteger(n) || n < 1)
      throw new HmmlabError('EINVAL', `bench faults: ${what} ${n} is not a positive integer`);
  };
  positive('pages', pages);
  positive('iters', iters);
  positive('threads', threads);
  for (const b of batches) positive('batch size', b);
  if (threads > pages) {
    throw new HmmlabError(
      'EINVAL',
      `bench faults: ${threads} threads is more than the ${pages} pages to share`,
    );
  }
}

/**
 * The rows of a run, in report order, policy by policy. The thrashing pool holds half the pages;
 * with several kernels, which then run in turn (inTurn), half the largest slice, so that each
 * kernel thrashes. The large rows come only when `largeBytes` is more pages than `pages`.
 */
export function planFaultRows(
  pages: number,
  batches: readonly number[],
  threads = 1,
  opts: {
    policies?: readonly DevicePolicyName[];
    replayPolicies?: readonly ReplayPolicy[];
    largePages?: number;
  } = {},
): FaultRowPlan[] {
  const rows: FaultRowPlan[] = [];
  const thrashPool = Math.max(1, Math.floor(Math.ceil(pages / threads) / 2));
  const large = opts.largePages ?? 0;
  for (const policy of opts.policies ?? DEVICE_POLICY_NAMES) {
    const base = {
      policy,
      batchSize: DEFAULT_BATCH_SIZE,
      replayPolicy: DEFAULT_REPLAY_POLICY,
      devicePages: pages,
      pages,
      kernel: 'devwrite' as const,
    };
    const row = (what: string, mode: FaultMode, more: Partial<FaultRowPlan> = {}): FaultRowPlan => ({
      ...base,
      what: `${policy}: ${what}`,
      mode,
      ...more,
    });
    rows.push(
      row('fault write', 'fault-write'),
      row('prefetch + write', 'prefetch-write'),
      row('mapped write (floor)', 'mapped-write'),
      row('fault read', 'fault-read', { kernel: 'devread' }),
      row('prefetch + read', 'prefetch-read', { kernel: 'devread' }),
      ...batches.map((b) => row(`fault write, batch ${b}`, 'batch-write', { batchSize: b })),
      ...(opts.replayPolicies ?? REPLAY_POLICIES).map((r) =>
        row(`fault write, replay ${r}`, 'replay-write', { replayPolicy: r }),
      ),
      row(`thrash write, pool ${thrashPool}${threads > 1 ? ', kernels in turn' : ''}`, 'thrash-write', {
        devicePages: thrashPool,
      }),
    );
    if (large > pages) {
      rows.push(
        row(`fault write, ${large} pages`, 'large-fault-write', { pages: large, devicePages: large }),
        row(`prefetch + write, ${large} pages`, 'large-prefetch-write', { pages: large, devicePages: large }),
      );
    }
  }
  return rows;
}

/** The slices of [0, pages) that `threads` kernels take, one file (and mount) each. */
export function streamSlices(
  pages: number,
  threads: number,
): { space: number; first: number; count: number }[] {
  const out = [];
  for (let t = 0; t < threads; t++) {
    const first = Math.floor((t * pages) / threads);
    const end = Math.floor(((t + 1) * pages) / threads);
    out.push({ space: t + 1, first, count: end - first });
  }
  return out;
}

/** Fault batches a fault-driven row needs when every page faults once: ceil(slice / batch) per kernel. */
export function expectedBatches(
  pages: number,
  threads: number,
  batchSize: number,
  devicePages: number,
): number {
  const b = Math.min(batchSize, devicePages);
  return streamSlices(pages, threads).reduce((s, x) => s + Math.ceil(x.count / b), 0);
}

/**
 * Whether the row's kernels run one after another rather than at once. Device eviction while
 * another kernel's launch reads its PTEs back is not safe in the device layer yet (the launch's
 * FramePool.touch puts a frame that is being evicted back on the LRU, and a second eviction then
 * revokes the page twice), so the thrashing row runs its kernels in turn.
 */
export function inTurn(row: FaultRowPlan, threads: number): boolean {
  return threads > 1 && row.mode === 'thrash-write';
}

// ---- one sample ----

/** The files of a run: one a slice, in one directory, and what each holds now. */
export interface FaultRig {
  gpu: GpuDevice;
  dir: string;
  pageSize: number;
  threads: number;
  /** Pages each file holds (the largest row's slice). */
  filePages: number[];
  /** The tag of the pattern each file holds now (TAG_FILE, or TAG once a devwrite ran). */
  tags: number[];
  /** Remove the directory (if the rig made it). */
  close(): void;
}

export interface FaultSample {
  /** Wall time of the access (the prefetch included in its row), ms. */
  ms: number;
  /** What the sample cost the device: faults, batches, launches, copies, evictions. */
  counters: DeviceCounters;
  verified: boolean;
}

/** Files for a run of `threads` slices of `pages` pages (the largest row's), written with TAG_FILE. */
export async function createFaultRig(
  gpu: GpuDevice,
  pages: number,
  pageSize: number,
  threads = 1,
  dir?: string,
): Promise<FaultRig> {
  const own = dir === undefined;
  const where = dir ?? mkdtempSync(join(tmpdir(), 'hmmlab-bench-faults-'));
  const slices = streamSlices(pages, threads);
  const fs = await HmmFs.mount({ dir: where, pageSize, hostPages: 1024 });
  try {
    for (const [t, s] of slices.entries()) {
      const f = await fs.open(`slice${t}`, { create: true });
      await f.truncate(0);
      for (let p = 0; p < s.count; p += 1024) {
        const n = Math.min(1024, s.count - p);
        await f.write(p * pageSize, patternBytes(p * pageSize, n * pageSize, TAG_FILE));
      }
      await f.fsync();
    }
  } finally {
    await fs.unmount();
  }
  return {
    gpu,
    dir: where,
    pageSize,
    threads,
    filePages: slices.map((s) => s.count),
    tags: slices.map(() => TAG_FILE),
    close: () => {
      if (own) rmSync(where, { recursive: true, force: true });
    },
  };
}

/** The device memory and policy a row runs on (one device memory, a policy instance a mount). */
export async function rowDevice(rig: FaultRig, row: FaultRowPlan): Promise<DeviceMemory> {
  return DeviceMemory.create(rig.gpu, {
    devicePages: row.devicePages,
    pageSize: rig.pageSize,
    batchSize: row.batchSize,
    replayPolicy: row.replayPolicy,
  });
}

/**
 * One sample of a row on `dm`: mounts (one per slice), the pages cached, the timed access, the
 * data checked, the mounts unmounted. Its `verified` says whether the data matched.
 */
export async function runFaultSample(
  rig: FaultRig,
  row: FaultRowPlan,
  dm: DeviceMemory,
): Promise<FaultSample> {
  const ps = rig.pageSize;
  const slices = streamSlices(row.pages, rig.threads);
  const mounts: HmmFs[] = [];
  try {
    const files: File[] = [];
    for (const [t, s] of slices.entries()) {
      const fs = await HmmFs.mount({
        dir: rig.dir,
        pageSize: ps,
        hostPages: s.count + 64,
        policy: createDevicePolicy(row.policy, dm),
      });
      mounts.push(fs);
      const f = await fs.open(`slice${t}`);
      await f.read(0, s.count * ps); // cached, clean
      files.push(f);
    }
    const len = (t: number) => slices[t].count * ps;
    if (row.mode === 'mapped-write') {
      for (const [t, f] of files.entries()) await f.devicePrefetch(0, len(t), true);
    }
    const prefetch =
      row.mode === 'prefetch-write' || row.mode === 'prefetch-read' || row.mode === 'large-prefetch-write';
    const run = async (t: number): Promise<Uint8Array | null> => {
      const f = files[t];
      if (prefetch) await f.devicePrefetch(0, len(t), row.kernel === 'devwrite');
      if (row.kernel === 'devread') return f.deviceRead(0, len(t));
      await f.deviceWrite(0, len(t), TAG);
      return null;
    };
    const before = { ...dm.counters };
    const t0 = performance.now();
    const results: (Uint8Array | null)[] = [];
    if (inTurn(row, rig.threads)) for (let t = 0; t < files.length; t++) results.push(await run(t));
    else results.push(...(await Promise.all(files.map((_, t) => run(t)))));
    const ms = performance.now() - t0;
    const counters = diffCounters(dm.counters, before);
    let verified = true;
    for (const [t, f] of files.entries()) {
      const tag = row.kernel === 'devwrite' ? TAG : rig.tags[t];
      const want = patternBytes(0, len(t), tag);
      const got = results[t] ?? (await f.read(0, len(t)));
      const at = firstDifference(got, want);
      if (at >= 0 || got.length !== want.length) verified = false;
      if (row.kernel === 'devwrite') rig.tags[t] = TAG;
    }
    return { ms, counters, verified };
  } finally {
    for (const fs of mounts) await fs.unmount();
  }
}

/** EIO naming the row, file byte and page where `got` (file bytes from `base` on) differs from `want`. */
export function checkFileBytes(
  what: string,
  got: Uint8Array,
  want: Uint8Array,
  base: number,
  pageSize: number,
): void {
  const at = firstDifference(got, want);
  if (at < 0) return;
  const x = base + at;
  throw new HmmlabError(
    'EIO',
    `bench faults: ${what}: data differs at file byte ${x} (page ${Math.floor(x / pageSize)}): ` +
      `got ${got[at]}, expected ${want[at]}`,
  );
}

// ---- the run ----

/** A target of the issue and where this run stands: `met`, and by how much (measured / target). */
export interface BenchTarget {
  name: string;
  policy?: string;
  /** What is compared with what, in words. */
  measure: string;
  target: number;
  measured: number;
  met: boolean;
  /** How many times short of the target: 1 or less when met (measured / target for an "at most" target, target / measured for an "at least" one). */
  ratio: number;
}

export interface FaultBenchReport {
  rows: FaultBenchRow[];
  /** The raw copy of one page in this run: at the batch's size (amortized) and alone, us. */
  rawPageCopy: { pageSize: number; batchBytes: number; usAmortized: number; usAlone: number; path: string };
  targets: BenchTarget[];
}

/** Measure every row; rows come back in planFaultRows order, with vsPrefetch filled in. */
export async function benchFaults(gpu: GpuDevice, options: FaultBenchOptions = {}): Promise<FaultBenchRow[]> {
  return (await benchFaultsReport(gpu, options)).rows;
}

export async function benchFaultsReport(
  gpu: GpuDevice,
  options: FaultBenchOptions = {},
): Promise<FaultBenchReport> {
  const pages = options.pages ?? DEFAULT_FAULT_PAGES;
  const pageSize = options.pageSize ?? DEFAULT_FAULT_PAGE_SIZE;
  const batches = options.batches ?? DEFAULT_FAULT_BATCHES;
  const threads = options.threads ?? 1;
  const iters = options.iters ?? DEFAULT_FAULT_ITERS;
  const warmup = options.warmup ?? 1;
  checkOptions(pages, pageSize, batches, threads, iters);
  const largePages = Math.floor((options.largeBytes ?? DEFAULT_LARGE_BYTES) / pageSize);
  const plan = planFaultRows(pages, batches, threads, {
    policies: options.policies,
    replayPolicies: options.replayPolicies,
    largePages,
  });
  const rig = await createFaultRig(
    gpu,
    Math.max(...plan.map((r) => r.pages)),
    pageSize,
    threads,
    options.dir,
  );
  const perRow = warmup + iters;
  const total = plan.length * perRow;
  const rows: FaultBenchRow[] = [];
  try {
    for (const row of plan) {
      const dm = await rowDevice(rig, row);
      try {
        const samples: FaultSample[] = [];
        for (let i = 0; i < perRow; i++) {
          options.onProgress?.(rows.length * perRow + i, total, row.what);
          const s = await gpu.scoped(`bench faults: ${row.what}`, () => runFaultSample(rig, row, dm));
          if (i >= warmup) samples.push(s);
        }
        rows.push(summarizeRow(row, samples, { pageSize, threads }));
      } finally {
        dm.destroy();
      }
    }
  } finally {
    rig.close();
  }
  options.onProgress?.(total, total, '');
  for (const r of rows) {
    const large = r.mode.startsWith('large-');
    const base = rows.find(
      (x) => x.policy === r.policy && x.mode === (large ? 'large-prefetch-write' : 'prefetch-write'),
    );
    r.vsPrefetch = base ? r.ms / base.ms : Number.NaN;
  }
  const raw = await rawPageCopy(gpu, pageSize, DEFAULT_BATCH_SIZE);
  return { rows, rawPageCopy: raw, targets: faultTargets(rows, raw) };
}

/** The raw copy of one page, measured in this run: amortized over a batch's copy, and alone (h2d, fastest path). */
async function rawPageCopy(gpu: GpuDevice, pageSize: number, batch: number) {
  const batchBytes = pageSize * batch;
  const rows = await benchCopy(gpu, {
    sizes: [pageSize, batchBytes],
    paths: ['h2d-writeBuffer', 'h2d-staging'],
    iters: 3,
  });
  const best = (bytes: number) =>
    rows.filter((r) => r.bytes === bytes).reduce((a, b) => (b.gbps > a.gbps ? b : a));
  const amortized = best(batchBytes);
  const alone = best(pageSize);
  return {
    pageSize,
    batchBytes,
    usAmortized: pageSize / (amortized.gbps * 1e3),
    usAlone: pageSize / (alone.gbps * 1e3),
    path: amortized.path,
  };
}

/** The issue's targets for fault service, from this run's rows. */
export function faultTargets(
  rows: readonly FaultBenchRow[],
  raw: FaultBenchReport['rawPageCopy'],
): BenchTarget[] {
  const out: BenchTarget[] = [];
  const policies = [...new Set(rows.map((r) => r.policy))];
  for (const policy of policies) {
    const of = (mode: FaultMode) => rows.find((r) => r.policy === policy && r.mode === mode);
    for (const [fault, pre, size] of [
      ['fault-write', 'prefetch-write', 'the run'],
      ['large-fault-write', 'large-prefetch-write', 'the large rows'],
    ] as const) {
      const f = of(fault);
      const p = of(pre);
      if (!f || !p) continue;
      const measured = f.ms / p.ms;
      out.push({
        name: `first touch by faults over a prefetch, ${f.pages} pages`,
        policy,
        measure: `${f.what} ms / ${p.what} ms (${size})`,
        target: 1.3,
        measured,
        met: measured <= 1.3,
        ratio: measured / 1.3,
      });
    }
    const b = rows.find(
      (r) => r.policy === policy && r.mode === 'batch-write' && r.batchSize === DEFAULT_BATCH_SIZE,
    );
    if (b && b.faultsUnique > 0) {
      const target = 4 * raw.usAmortized;
      out.push({
        name: `amortized service per fault at batch ${DEFAULT_BATCH_SIZE}`,
        policy,
        measure: `service us per fault / the raw copy of one page within a ${formatBytes(raw.batchBytes)} copy (${raw.path})`,
        target,
        measured: b.usPerFault,
        met: b.usPerFault <= target,
        ratio: b.usPerFault / target,
      });
    }
  }
  return out;
}

function summarizeRow(
  row: FaultRowPlan,
  samples: FaultSample[],
  run: { pageSize: number; threads: number },
): FaultBenchRow {
  const t = summarize(samples.map((s) => s.ms));
  const c = samples[samples.length - 1].counters;
  const bytes = row.pages * run.pageSize;
  const med = (f: (c: DeviceCounters) => number) => median(samples.map((s) => f(s.counters)));
  const serviceMs = med((x) => x.serviceMs);
  return {
    ...row,
    ...run,
    bytes,
    ms: t.median,
    min: t.min,
    max: t.max,
    samples: t.samples,
    pagesPerSec: row.pages / (t.median / 1000),
    gbps: gbps(bytes, t.median),
    faultsRaw: c.faultsRaw,
    faultsUnique: c.faultsUnique,
    batches: c.batches,
    launches: c.launches,
    replays: c.replays,
    evictions: c.evictions,
    evictionsDirty: c.evictionsDirty,
    bytesHostToDevice: c.bytesHostToDevice,
    bytesDeviceToHost: c.bytesDeviceToHost,
    launchMs: med((x) => x.launchMs),
    gpuMs: med((x) => x.launchGpuMs),
    fetchMs: med((x) => (x.launchGpuMs > 0 ? x.launchMs - x.launchGpuMs : 0)),
    serviceMs,
    copyMs: med((x) => x.copyMs),
    replayMs: med((x) => x.replayMs),
    usPerFault: c.faultsUnique ? (serviceMs * 1000) / c.faultsUnique : 0,
    msPerBatch: c.batches ? serviceMs / c.batches : 0,
    vsPrefetch: Number.NaN,
    verified: samples.every((s) => s.verified),
  };
}

// ---- output ----

function compact(n: number): string {
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
  return String(Math.round(n));
}

/** The terminal table: one line a row. */
export function formatFaultTable(rows: readonly FaultBenchRow[]): string {
  const head = [
    'what',
    'ms',
    '(min, max)',
    'GB/s',
    'faults raw/unique',
    'batches',
    'replays',
    'evicted',
    'launch ms',
    'gpu ms',
    'fetch ms',
    'service ms',
    'copy ms',
    'replay ms',
    'us/fault',
    'x prefetch',
    'ok',
  ];
  const body = rows.map((r) => [
    r.what,
    r.ms.toFixed(1),
    `(${r.min.toFixed(1)}, ${r.max.toFixed(1)})`,
    r.gbps.toFixed(2),
    `${compact(r.faultsRaw)}/${r.faultsUnique}`,
    String(r.batches),
    String(r.replays),
    String(r.evictions),
    r.launchMs.toFixed(1),
    r.gpuMs.toFixed(1),
    r.fetchMs.toFixed(1),
    r.serviceMs.toFixed(1),
    r.copyMs.toFixed(1),
    r.replayMs.toFixed(1),
    r.usPerFault.toFixed(1),
    Number.isNaN(r.vsPrefetch) ? '-' : r.vsPrefetch.toFixed(2),
    r.verified ? 'yes' : 'NO',
  ]);
  return formatTable(head, body, (i) => i === 0);
}

/** The targets as lines: name, measured against target, met or by how much missed. */
export function formatTargets(targets: readonly BenchTarget[]): string {
  return targets
    .map(
      (t) =>
        `target ${t.name}${t.policy ? ` (${t.policy})` : ''}: ${t.measured.toFixed(2)} against ${t.target.toFixed(2)}: ` +
        (t.met ? 'met' : `missed: ${t.ratio.toFixed(1)} times short of it`),
    )
    .join('\n')
    .concat(targets.length ? '\n' : '');
}

/** A vega-lite chart: ms per mode and policy (bars), and ms against fault batch size per policy (lines). */
export function faultChartSpec(rows: readonly FaultBenchRow[], title: string): Record<string, unknown> {
  const modes = rows.filter((r) => r.mode !== 'batch-write');
  const sweep = rows.filter((r) => r.mode === 'batch-write');
  const sizes = [...new Set(sweep.map((r) => r.batchSize))];
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    background: 'white',
    hconcat: [
      {
        title: 'time per mode (median; label: x the prefetch)',
        width: 320,
        height: Math.max(200, 14 * modes.length),
        data: {
          values: modes.map((r) => ({
            what: r.what,
            policy: r.policy,
            ms: r.ms,
            ratio: Number.isNaN(r.vsPrefetch) ? '' : `${r.vsPrefetch.toFixed(2)}x`,
          })),
        },
        layer: [
          {
            mark: 'bar',
            encoding: {
              y: { field: 'what', type: 'nominal', sort: null, title: null, axis: { labelLimit: 280 } },
              x: { field: 'ms', type: 'quantitative', title: 'ms' },
              color: { field: 'policy', type: 'nominal' },
            },
          },
          {
            mark: { type: 'text', align: 'left', dx: 3 },
            encoding: {
              y: { field: 'what', type: 'nominal', sort: null },
              x: { field: 'ms', type: 'quantitative' },
              text: { field: 'ratio', type: 'nominal' },
            },
          },
        ],
      },
      {
        title: 'fault write against fault batch size',
        width: 320,
        height: 200,
        data: {
          values: sweep.map((r) => ({ batch: r.batchSize, ms: r.ms, policy: r.policy })),
        },
        mark: { type: 'line', point: true },
        encoding: {
          x: {
            field: 'batch',
            type: 'quantitative',
            title: 'fault batch size (pages)',
            scale: { type: 'log', base: 2 },
            axis: { values: sizes },
          },
          y: { field: 'ms', type: 'quantitative', title: 'ms (median)', scale: { type: 'log' } },
          color: { field: 'policy', type: 'nominal' },
        },
      },
    ],
  };
}
