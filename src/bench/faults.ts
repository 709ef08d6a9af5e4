/**
 * What fault-driven device access costs, side by side with an explicit prefetch and with the floor
 * (the kernel alone on pages already mapped): `hmmlab bench faults`.
 *
 * Each row is a way of getting `pages` pages of a file written (or read) by a device kernel:
 *   fault-write     every page faults: fetch, coalesce, service in batches, replay
 *   prefetch-write  alloc + copyToFrames + map every page, then the kernel (no faults); both timed
 *   mapped-write    the kernel alone, every page mapped beforehand (untimed): the floor
 *   fault-read      devread, every page faults (read faults, ro PTEs)
 *   batch-write     fault-write again for each fault batch size of the sweep
 *   thrash-write    fault-write with a device pool of half the pages: device eviction, re-faults
 *
 * The fault service is the bench's own stand-in for the mirror policy, as lib/test_hmm.c's dmirror
 * backs its device with host memory: the file is a host array, a fault copies the page into a frame
 * (mirror's copy A -> A' on a device fault) and maps it, device eviction copies dirty frames back.
 * Every sample starts from fresh device state (a new DeviceMemory, the host array reset) after one
 * warm-up sample; the median is reported. The data is checked after every sample: the bytes read
 * back equal the op-log pattern the kernel wrote (or, for devread, the file's bytes).
 */
import {
  checkPageSize,
  DEFAULT_BATCH_SIZE,
  type DeviceCounters,
  DeviceMemory,
  type DevicePageTable,
  type FaultResolution,
  type FaultServicer,
  type FrameWrite,
  type KernelResult,
  patternBytes,
} from '../device/index.ts';
import { MAX_CHUNK_BYTES } from '../device/kernels.ts';
import { diffCounters } from '../device/stats.ts';
import { HmmlabError } from '../errors.ts';
import type { GpuDevice } from '../gpu/device.ts';
import { fillRandom, firstDifference } from './random.ts';
import { gbps, median, summarize } from './stats.ts';
import { numberOf, parseCount, parsePageSize } from './units.ts';

export const FAULT_MODES = [
  'fault-write',
  'prefetch-write',
  'mapped-write',
  'fault-read',
  'batch-write',
  'thrash-write',
] as const;
export type FaultMode = (typeof FAULT_MODES)[number];

export const DEFAULT_FAULT_PAGES = 4096;
export const DEFAULT_FAULT_PAGE_SIZE = 4096;
export const DEFAULT_FAULT_BATCHES = [1, 16, 64, 256, 1024];
/** Timed samples a row: three (after a warm-up) keep the default run under a minute on lavapipe. */
export const DEFAULT_FAULT_ITERS = 3;
/** The tag of the op-log pattern every devwrite stores (byte(x) = (x + 7 * tag) mod 251). */
const TAG = 5;

export interface FaultBenchOptions {
  /** Pages of the file the kernels touch (default 4,096). */
  pages?: number;
  pageSize?: number;
  /** Fault batch sizes of the sweep (default 1, 16, 64, 256, 1024). */
  batches?: number[];
  /**
   * Kernels run at once, each on its own slice of the pages in its own device address space
   * (default 1). Their fault batches interleave on the one host thread that services them.
   */
  threads?: number;
  /** Timed samples per row (default 3). */
  iters?: number;
  /** Untimed samples before them (default 1). */
  warmup?: number;
  seed?: number;
  /** Called before each sample, and once at the end with done === total. */
  onProgress?: (done: number, total: number, what: string) => void;
}

/** One row to measure. */
export interface FaultRowPlan {
  what: string;
  mode: FaultMode;
  kernel: 'devwrite' | 'devread';
  batchSize: number;
  devicePages: number;
}

export interface FaultBenchRow extends FaultRowPlan {
  pages: number;
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
  /** Median over samples of the time in launches (dispatch to fault-buffer readback). */
  launchMs: number;
  /** Median over samples of the time spent in fault service, and in copies (within it or not). */
  serviceMs: number;
  copyMs: number;
  /** ms / the prefetch row's ms: what faulting costs over knowing the pages in advance. */
  vsPrefetch: number;
  /** Every sample's data was read back and checked. */
  verified: boolean;
}

// ---- limits and options ----

/**
 * The most pages a run may use: a row measures one launch loop over its slice, so the slice is one
 * kernel chunk, whose devread output is bound whole (maxStorageBufferBindingSize, and at most
 * MAX_CHUNK_BYTES); the host holds the file three times and lavapipe's device memory is host
 * memory, so stay within an eighth of free memory.
 */
export function faultPagesCap(gpu: GpuDevice, pageSize: number, freeMemory: number): number {
  const bytes = Math.min(
    gpu.limits.maxStorageBufferBindingSize,
    gpu.limits.maxBufferSize,
    Math.floor(freeMemory / 8),
    MAX_CHUNK_BYTES,
  );
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
        '(maxStorageBufferBindingSize, or an eighth of free host memory)',
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
  threads?: string;
  iters?: string;
  svg?: string;
}

/** Parsed flags; pages stays undefined when not given (the default is clamped to the device). */
export interface FaultBenchArgs {
  pages: number | undefined;
  pageSize: number;
  batches: number[];
  threads: number;
  iters: number;
}

/** Parse every flag (EINVAL naming the flag), before a device is opened. */
export function parseFaultBenchArgs(flags: BenchFaultsFlags): FaultBenchArgs {
  return {
    pages: flags.pages === undefined ? undefined : parseCount('--pages', flags.pages, 0),
    pageSize: parsePageSize(flags.pageSize, DEFAULT_FAULT_PAGE_SIZE),
    batches: flags.batch === undefined ? DEFAULT_FAULT_BATCHES : parseBatchList(flags.batch),
    threads: parseCount('--threads', flags.threads, 1),
    iters: parseCount('--iters', flags.iters, DEFAULT_FAULT_ITERS),
  };
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
  if (pages * pageSize > MAX_CHUNK_BYTES) {
    throw new HmmlabError(
      'ELIMIT',
      `bench faults: ${pages} pages of ${pageSize} bytes are more than one kernel chunk holds (1 GiB)`,
    );
  }
}

/**
 * The rows of a run, in report order. The thrashing pool holds half the pages; with several
 * kernels, which then run in turn (inTurn), half the largest slice, so that each kernel thrashes.
 */
export function planFaultRows(pages: number, batches: readonly number[], threads = 1): FaultRowPlan[] {
  const base = { batchSize: DEFAULT_BATCH_SIZE, devicePages: pages };
  const thrashPool = Math.max(1, Math.floor(Math.ceil(pages / threads) / 2));
  return [
    { ...base, what: 'fault write', mode: 'fault-write', kernel: 'devwrite' },
    { ...base, what: 'prefetch + write', mode: 'prefetch-write', kernel: 'devwrite' },
    { ...base, what: 'mapped write (floor)', mode: 'mapped-write', kernel: 'devwrite' },
    { ...base, what: 'fault read', mode: 'fault-read', kernel: 'devread' },
    ...batches.map(
      (b): FaultRowPlan => ({
        what: `fault write, batch ${b}`,
        mode: 'batch-write',
        kernel: 'devwrite',
        batchSize: b,
        devicePages: pages,
      }),
    ),
    {
      what: `thrash write, pool ${thrashPool}${threads > 1 ? ', kernels in turn' : ''}`,
      mode: 'thrash-write',
      kernel: 'devwrite',
      batchSize: DEFAULT_BATCH_SIZE,
      devicePages: thrashPool,
    },
  ];
}

/** The slices of [0, pages) that `threads` kernels take, one device address space each. */
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

// ---- the bench's stand-in for the mirror policy ----

/**
 * dmirror-like fault service over a host array `file`: copy the page into a fresh frame (A -> A')
 * and map it (rw for a write fault); no frame free (all pinned by other batches) means retry.
 */
function hostServicer(file: Uint8Array, pageSize: number): FaultServicer {
  return async (faults, ctx) => {
    const fresh = faults.filter((f) => !ctx.lookup(f.index));
    const frames = await ctx.allocFrames(fresh.map((f) => f.index));
    const frameOf = new Map<number, number>();
    const copies: FrameWrite[] = [];
    fresh.forEach((f, i) => {
      const frame = frames[i];
      if (frame === null) return;
      frameOf.set(f.index, frame);
      copies.push({ frame, data: file.subarray(f.index * pageSize, (f.index + 1) * pageSize) });
    });
    await ctx.copyToFrames(copies);
    return faults.map((f): FaultResolution => {
      const frame = ctx.lookup(f.index)?.frame ?? frameOf.get(f.index);
      if (frame === undefined) return { ok: false, retry: true };
      return { ok: true, frame, perm: f.write ? 'rw' : 'ro' };
    });
  };
}

/** Device eviction copies dirty frames back into the host array (clean ones are dropped). */
function hostEvictionHook(dm: DeviceMemory, file: Uint8Array, pageSize: number): void {
  dm.setEvictionHook(async (victims, memory) => {
    const dirty = victims.filter((v) => v.dirty);
    const pages = await memory.copyFromFrames(dirty.map((v) => v.frame));
    dirty.forEach((v, i) => {
      file.set(pages[i], v.index * pageSize);
    });
    return undefined;
  });
}

/** Explicit prefetch: frames for every page of the slice, one batched copy, one map (rw). */
async function prefetch(
  dm: DeviceMemory,
  space: DevicePageTable,
  file: Uint8Array,
  first: number,
  count: number,
): Promise<void> {
  const ps = dm.pageSize;
  const indices = Array.from({ length: count }, (_, i) => first + i);
  const frames = await dm.allocFrames(space, indices);
  const missing = frames.indexOf(null);
  if (missing >= 0) {
    throw new HmmlabError('ENOSPC', `bench faults: prefetch found no frame for page ${indices[missing]}`);
  }
  await dm.copyToFrames(
    indices.map((index, i) => ({ frame: frames[i]!, data: file.subarray(index * ps, (index + 1) * ps) })),
  );
  await dm.map(
    space,
    indices.map((index, i) => ({ index, frame: frames[i]!, perm: 'rw' as const })),
  );
}

// ---- one sample ----

/** The host side of a run: the file's bytes, and what it holds after a devwrite of every page. */
export interface FaultRig {
  gpu: GpuDevice;
  pages: number;
  pageSize: number;
  threads: number;
  /** The file's bytes before each sample (seeded random). */
  source: Uint8Array;
  /** The file during a sample: faults copy from it, eviction and the check copy back into it. */
  file: Uint8Array;
  /** The file after a devwrite of every page. */
  written: Uint8Array;
}

export interface FaultSample {
  /** Wall time of the access (the prefetch included in its row), ms. */
  ms: number;
  /** What the sample cost the device: faults, batches, launches, copies, evictions. */
  counters: DeviceCounters;
}

export function createFaultRig(
  gpu: GpuDevice,
  pages: number,
  pageSize: number,
  threads = 1,
  seed = 0xfa017,
): FaultRig {
  const bytes = pages * pageSize;
  return {
    gpu,
    pages,
    pageSize,
    threads,
    source: fillRandom(new Uint8Array(bytes), seed),
    file: new Uint8Array(bytes),
    written: patternBytes(0, bytes, TAG),
  };
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

/** One sample of a row from fresh device state, its data checked (EIO naming the page if wrong). */
export async function runFaultSample(rig: FaultRig, row: FaultRowPlan): Promise<FaultSample> {
  const { gpu, pageSize: ps } = rig;
  rig.file.set(rig.source);
  const dm = await DeviceMemory.create(gpu, {
    devicePages: row.devicePages,
    pageSize: ps,
    batchSize: row.batchSize,
    // One chunk per slice: a row is one launch loop (the thrashing row thrashes within it).
    chunkBytes: Math.max(4, rig.pages * ps),
  });
  try {
    hostEvictionHook(dm, rig.file, ps);
    const servicer = hostServicer(rig.file, ps);
    const slices = streamSlices(rig.pages, rig.threads).map((s) => ({ ...s, table: dm.space(s.space) }));
    if (row.mode === 'mapped-write') {
      for (const s of slices) await prefetch(dm, s.table, rig.file, s.first, s.count);
      await gpu.drain('bench faults: prefetch');
    }
    const run = async (s: (typeof slices)[number]): Promise<KernelResult> => {
      if (row.mode === 'prefetch-write') await prefetch(dm, s.table, rig.file, s.first, s.count);
      return dm.runKernel(row.kernel, s.table, { off: s.first * ps, len: s.count * ps, tag: TAG }, servicer);
    };
    const before = { ...dm.counters };
    const t0 = performance.now();
    const results: KernelResult[] = [];
    if (inTurn(row, rig.threads)) for (const s of slices) results.push(await run(s));
    else results.push(...(await Promise.all(slices.map(run))));
    const ms = performance.now() - t0;
    const counters = diffCounters(dm.counters, before);
    for (const r of results) if (r.error) throw r.error;
    if (row.kernel === 'devread') {
      results.forEach((r, i) => {
        const s = slices[i];
        checkFileBytes(
          row.what,
          r.bytes!,
          rig.source.subarray(s.first * ps, (s.first + s.count) * ps),
          s.first * ps,
          ps,
        );
      });
    } else {
      // Pages still on the device join the ones eviction copied back: the whole file is checked.
      for (const s of slices) {
        const held = [...s.table.entries];
        const pages = await dm.copyFromFrames(held.map(([, e]) => e.frame));
        held.forEach(([index], i) => {
          rig.file.set(pages[i], index * ps);
        });
      }
      checkFileBytes(row.what, rig.file, rig.written, 0, ps);
    }
    return { ms, counters };
  } finally {
    dm.destroy();
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

/** Measure every row; rows come back in planFaultRows order, with vsPrefetch filled in. */
export async function benchFaults(gpu: GpuDevice, options: FaultBenchOptions = {}): Promise<FaultBenchRow[]> {
  const pages = options.pages ?? DEFAULT_FAULT_PAGES;
  const pageSize = options.pageSize ?? DEFAULT_FAULT_PAGE_SIZE;
  const batches = options.batches ?? DEFAULT_FAULT_BATCHES;
  const threads = options.threads ?? 1;
  const iters = options.iters ?? DEFAULT_FAULT_ITERS;
  const warmup = options.warmup ?? 1;
  checkOptions(pages, pageSize, batches, threads, iters);
  const rig = createFaultRig(gpu, pages, pageSize, threads, options.seed);
  const plan = planFaultRows(pages, batches, threads);
  const perRow = warmup + iters;
  const total = plan.length * perRow;
  const rows: FaultBenchRow[] = [];
  for (const row of plan) {
    const samples: FaultSample[] = [];
    for (let i = 0; i < perRow; i++) {
      options.onProgress?.(rows.length * perRow + i, total, row.what);
      const s = await gpu.scoped(`bench faults: ${row.what}`, () => runFaultSample(rig, row));
      if (i >= warmup) samples.push(s);
    }
    rows.push(summarizeRow(row, samples, { pages, pageSize, threads }));
  }
  options.onProgress?.(total, total, '');
  const floor = rows.find((r) => r.mode === 'prefetch-write')!.ms;
  for (const r of rows) r.vsPrefetch = r.ms / floor;
  return rows;
}

function summarizeRow(
  row: FaultRowPlan,
  samples: FaultSample[],
  run: { pages: number; pageSize: number; threads: number },
): FaultBenchRow {
  const t = summarize(samples.map((s) => s.ms));
  const c = samples[samples.length - 1].counters;
  const bytes = run.pages * run.pageSize;
  return {
    ...row,
    ...run,
    bytes,
    ms: t.median,
    min: t.min,
    max: t.max,
    samples: t.samples,
    pagesPerSec: run.pages / (t.median / 1000),
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
    launchMs: median(samples.map((s) => s.counters.launchMs)),
    serviceMs: median(samples.map((s) => s.counters.serviceMs)),
    copyMs: median(samples.map((s) => s.counters.copyMs)),
    vsPrefetch: Number.NaN,
    verified: true,
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
    'pages/s',
    'GB/s',
    'faults raw/unique',
    'batches',
    'replays',
    'evicted',
    'launch ms',
    'service ms',
    'x prefetch',
  ];
  const body = rows.map((r) => [
    r.what,
    r.ms.toFixed(1),
    `(${r.min.toFixed(1)}, ${r.max.toFixed(1)})`,
    compact(r.pagesPerSec),
    r.gbps.toFixed(2),
    `${compact(r.faultsRaw)}/${r.faultsUnique}`,
    String(r.batches),
    String(r.replays),
    String(r.evictions),
    r.launchMs.toFixed(1),
    r.serviceMs.toFixed(1),
    r.vsPrefetch.toFixed(2),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])))
      .join('  ')
      .trimEnd();
  return [line(head), ...body.map(line)].join('\n') + '\n';
}

/** A vega-lite chart: ms per mode (bars), and ms and batches against fault batch size (lines). */
export function faultChartSpec(rows: readonly FaultBenchRow[], title: string): Record<string, unknown> {
  const modes = rows.filter((r) => r.mode !== 'batch-write');
  const sweep = rows.filter((r) => r.mode === 'batch-write');
  const sizes = sweep.map((r) => r.batchSize);
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    background: 'white',
    hconcat: [
      {
        title: 'time per mode (median; label: x the prefetch)',
        width: 320,
        height: 200,
        data: {
          values: modes.map((r) => ({ what: r.what, ms: r.ms, ratio: `${r.vsPrefetch.toFixed(2)}x` })),
        },
        layer: [
          {
            mark: 'bar',
            encoding: {
              y: { field: 'what', type: 'nominal', sort: null, title: null, axis: { labelLimit: 240 } },
              x: { field: 'ms', type: 'quantitative', title: 'ms' },
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
          values: sweep.flatMap((r) => [
            { batch: r.batchSize, value: r.ms, series: 'ms (median)' },
            { batch: r.batchSize, value: r.batches, series: 'fault batches' },
          ]),
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
          y: { field: 'value', type: 'quantitative', title: null, scale: { type: 'log' } },
          color: { field: 'series', type: 'nominal', title: null },
        },
      },
    ],
  };
}
