/**
 * Copy bandwidth between host and GPU memory, measured as NVIDIA's nvbandwidth does: warm-up
 * copies first, then several samples of several copies each, the median reported; the data is
 * checked after each path. This is the ceiling the page cache's own copies are measured against.
 *
 * Host arrays and device buffers are allocated once at the largest size and every size uses a
 * prefix of them: on a small VM the first touch of fresh memory costs more than the copy itself.
 */
import { HmmlabError } from '../errors.ts';
import {
  copyDevice,
  copyHost,
  createDeviceBuffer,
  deviceSpan,
  ReadbackRing,
  StagingRing,
  writeDevice,
} from '../gpu/copy.ts';
import type { GpuDevice } from '../gpu/device.ts';
import { fillRandom, firstDifference } from './random.ts';
import { gbps, summarize } from './stats.ts';
import { formatTable } from './table.ts';
import { formatBytes } from './units.ts';

export const COPY_PATHS = [
  'h2d-writeBuffer',
  'h2d-staging',
  'd2h-mapread',
  'd2d-copy',
  'host-memcpy',
] as const;
export type CopyPath = (typeof COPY_PATHS)[number];

export interface CopyBenchRow {
  path: CopyPath;
  bytes: number;
  /** Median GB/s (10^9 bytes per second) over the samples. */
  gbps: number;
  min: number;
  max: number;
  samples: number;
  /** Copies timed together in one sample. */
  copies: number;
}

export interface CopyBenchOptions {
  sizes?: number[];
  /** Samples per path and size (default 5). */
  iters?: number;
  /** Untimed copies before the samples (default 2). */
  warmup?: number;
  paths?: readonly CopyPath[];
  seed?: number;
  /** Called before each path and size is measured, and once at the end with done === total. */
  onProgress?: (done: number, total: number, path: CopyPath | undefined, bytes: number) => void;
}

/** 4 KiB, 16 KiB, ... 256 MiB: powers of 4. */
export const DEFAULT_COPY_SIZES = Array.from({ length: 9 }, (_, i) => 4096 * 4 ** i);

/**
 * The largest size a copy benchmark may use on this device: maxBufferSize, and a tenth of free
 * host memory (two host arrays, three device buffers and the rings; lavapipe's device memory is
 * host memory).
 */
export function copySizeCap(gpu: GpuDevice, freeMemory: number): number {
  return Math.min(gpu.limits.maxBufferSize, Math.floor(freeMemory / 10));
}

/** The default sizes clamped to the cap; the cap itself when even 4 KiB is over it. */
export function defaultCopySizes(cap: number): number[] {
  const sizes = DEFAULT_COPY_SIZES.filter((s) => s <= cap);
  return sizes.length ? sizes : [Math.max(4, cap - (cap % 4))];
}

/** The smallest copy: WebGPU copies and writeBuffer move whole 4-byte words. */
export const MIN_COPY_SIZE = 4;

/** Reject sizes under MIN_COPY_SIZE (EINVAL) before anything runs. */
export function checkMinCopySizes(sizes: readonly number[]): void {
  const small = sizes.find((s) => s < MIN_COPY_SIZE);
  if (small !== undefined) {
    throw new HmmlabError(
      'EINVAL',
      `bad size ${small}: a copy is at least ${MIN_COPY_SIZE} bytes (WebGPU copies whole 4-byte words)`,
    );
  }
}

/** Reject sizes over the cap with ELIMIT, naming the size and the limit. */
export function checkCopySizes(sizes: readonly number[], cap: number, gpu: GpuDevice): void {
  for (const s of sizes) {
    if (s > cap) {
      const why =
        s > gpu.limits.maxBufferSize
          ? `the device's maxBufferSize of ${gpu.limits.maxBufferSize}`
          : `${cap} bytes (a tenth of free host memory)`;
      throw new HmmlabError('ELIMIT', `bench copy: size ${s} is over ${why}`);
    }
  }
}

/** Copies per sample: enough that a sample of small copies is not just the cost of one wait. */
export function copiesPerSample(bytes: number): number {
  return Math.max(1, Math.min(16, Math.floor((8 << 20) / bytes)));
}

/*
 * A note on writeBuffer, measured on lavapipe (Dawn 0.6.2): once a GPU command (copyBufferToBuffer,
 * clearBuffer, and so presumably a kernel) has written a buffer, every later queue.writeBuffer into
 * it costs about 3 ms per MiB in the call itself (~0.3 GB/s) instead of ~0.05 ms. The benchmark
 * measures writeBuffer into a buffer that only writeBuffer writes (its best case); a destination
 * that kernels also write is better served by the staging ring.
 */
interface Rig {
  gpu: GpuDevice;
  src: Uint8Array;
  dst: Uint8Array;
  /** The device source of d2h and d2d; only writeBuffer writes it. */
  a: GPUBuffer;
  /** The destination of writeBuffer, and only of writeBuffer: see the note on writeBuffer above. */
  w: GPUBuffer;
  /** The destination of the staging ring and of d2d. */
  b: GPUBuffer;
  staging: StagingRing;
  readback: ReadbackRing;
}

/** One copy of n bytes by `path`; GPU work is only submitted (the sample waits for it). */
async function copyOnce(rig: Rig, path: CopyPath, n: number): Promise<void> {
  switch (path) {
    case 'h2d-writeBuffer':
      return writeDevice(rig.gpu, rig.w, 0, rig.src.subarray(0, n));
    case 'h2d-staging':
      return rig.staging.write(rig.b, 0, rig.src.subarray(0, n));
    case 'd2h-mapread':
      await rig.readback.read(rig.a, 0, n, rig.dst);
      return;
    case 'd2d-copy':
      return copyDevice(rig.gpu, rig.a, 0, rig.b, 0, n);
    case 'host-memcpy':
      return copyHost(rig.dst, rig.src.subarray(0, n));
  }
}

function touchesGpu(path: CopyPath): boolean {
  return path !== 'host-memcpy';
}

/** Zero the destination of `path`, so that the check after it proves this path wrote the data. */
function clearDestination(rig: Rig, path: CopyPath, n: number): void {
  rig.dst.fill(0, 0, n);
  if (path === 'd2h-mapread' || path === 'host-memcpy') return;
  if (path === 'h2d-writeBuffer') {
    writeDevice(rig.gpu, rig.w, 0, rig.dst.subarray(0, n)); // not clearBuffer: see the note above
    return;
  }
  const enc = rig.gpu.device.createCommandEncoder({ label: 'bench-clear' });
  enc.clearBuffer(rig.b, 0, deviceSpan(n));
  rig.gpu.device.queue.submit([enc.finish()]);
}

/** Check that the destination of `path` holds the first n source bytes. */
async function verify(rig: Rig, path: CopyPath, n: number): Promise<void> {
  const got =
    path === 'd2h-mapread' || path === 'host-memcpy'
      ? rig.dst.subarray(0, n)
      : await rig.readback.read(path === 'h2d-writeBuffer' ? rig.w : rig.b, 0, n, rig.dst);
  const at = firstDifference(got.subarray(0, n), rig.src.subarray(0, n));
  if (at >= 0) {
    throw new HmmlabError(
      'EIO',
      `bench copy: ${path} of ${n} bytes: data differs at byte ${at} (got ${got[at]}, wrote ${rig.src[at]})`,
    );
  }
}

async function measure(
  rig: Rig,
  path: CopyPath,
  n: number,
  iters: number,
  warmup: number,
): Promise<CopyBenchRow> {
  const copies = copiesPerSample(n);
  const wait = () => (touchesGpu(path) ? rig.gpu.drain(`bench copy ${path}`) : Promise.resolve());
  clearDestination(rig, path, n);
  for (let i = 0; i < warmup; i++) await copyOnce(rig, path, n);
  await wait();
  const rates: number[] = [];
  for (let s = 0; s < iters; s++) {
    const t0 = performance.now();
    for (let c = 0; c < copies; c++) await copyOnce(rig, path, n);
    await wait();
    rates.push(gbps(n * copies, performance.now() - t0));
  }
  await verify(rig, path, n);
  const sum = summarize(rates);
  return { path, bytes: n, gbps: sum.median, min: sum.min, max: sum.max, samples: sum.samples, copies };
}

/** Run the copy benchmark over every path and size; rows are in size order, then path order. */
export async function benchCopy(gpu: GpuDevice, options: CopyBenchOptions = {}): Promise<CopyBenchRow[]> {
  const sizes = options.sizes ?? DEFAULT_COPY_SIZES;
  const paths = options.paths ?? COPY_PATHS;
  const iters = options.iters ?? 5;
  const warmup = options.warmup ?? 2;
  if (!Number.isSafeInteger(iters) || iters < 1) {
    throw new HmmlabError('EINVAL', `bench copy: --iters ${iters} is not a positive integer`);
  }
  if (sizes.length === 0) throw new HmmlabError('EINVAL', 'bench copy: no sizes');
  for (const s of sizes) {
    if (!Number.isSafeInteger(s) || s < MIN_COPY_SIZE)
      throw new HmmlabError('EINVAL', `bench copy: bad size ${s}`);
  }
  const largest = deviceSpan(Math.max(...sizes));
  const total = sizes.length * paths.length;
  const rows: CopyBenchRow[] = [];
  const rig = await gpu.scoped('bench copy: allocate', () => ({
    gpu,
    src: fillRandom(new Uint8Array(largest), options.seed ?? 0x600d5eed),
    dst: new Uint8Array(largest),
    a: createDeviceBuffer(gpu, 'bench-a', largest),
    w: createDeviceBuffer(gpu, 'bench-w', largest),
    b: createDeviceBuffer(gpu, 'bench-b', largest),
    staging: new StagingRing(gpu),
    readback: new ReadbackRing(gpu),
  }));
  try {
    for (const n of [...sizes].sort((x, y) => x - y)) {
      // The device source of d2h and d2d holds the same data the host source does.
      await gpu.scoped('bench copy: fill', () => {
        writeDevice(gpu, rig.a, 0, rig.src.subarray(0, n));
        return gpu.drain();
      });
      for (const path of paths) {
        options.onProgress?.(rows.length, total, path, n);
        rows.push(
          await gpu.scoped(`bench copy ${path} ${n} bytes`, () => measure(rig, path, n, iters, warmup)),
        );
      }
    }
    options.onProgress?.(total, total, undefined, 0);
  } finally {
    rig.staging.destroy();
    rig.readback.destroy();
    rig.a.destroy();
    rig.w.destroy();
    rig.b.destroy();
  }
  return rows;
}

/** The terminal table: path, size, GB/s median, min, max, samples. */
/** A rate in GB/s with two decimals, or in MB/s where that rounds to zero (tiny copies). */
export function formatRate(gbps: number): string {
  return gbps >= 0.005 || gbps === 0 ? gbps.toFixed(2) : `${(gbps * 1000).toFixed(2)} MB/s`;
}

export function formatCopyTable(rows: readonly CopyBenchRow[]): string {
  const head = ['path', 'size', 'GB/s', 'min', 'max', 'samples'];
  const body = rows.map((r) => [
    r.path,
    formatBytes(r.bytes),
    formatRate(r.gbps),
    formatRate(r.min),
    formatRate(r.max),
    `${r.samples}x${r.copies}`,
  ]);
  return formatTable(head, body, (i) => i < 2);
}

/** A managed row as the chart draws it (src/bench/managed.ts ManagedRow). */
interface ManagedPoint {
  path: string;
  policy: string;
  pageSize: number;
  bytes: number;
  gbps: number;
}

/**
 * A vega-lite line chart: GB/s against size (log scale), one line per path; with managed rows, a
 * panel per page size, each with the raw paths and the managed ones (one line per path and policy).
 */
export function copyChartSpec(
  rows: readonly CopyBenchRow[],
  title: string,
  managed: readonly ManagedPoint[] = [],
): Record<string, unknown> {
  const sizes = [...new Set(rows.map((r) => r.bytes))].sort((a, b) => a - b);
  const pageSizes = [...new Set(managed.map((m) => m.pageSize))].sort((a, b) => a - b);
  const raw = rows.map((r) => ({ path: r.path, bytes: r.bytes, gbps: r.gbps }));
  const values = pageSizes.length
    ? [
        ...pageSizes.flatMap((ps) => raw.map((r) => ({ ...r, pages: `${formatBytes(ps)} pages` }))),
        ...managed.map((m) => ({
          path: `${m.path} ${m.policy}`,
          bytes: m.bytes,
          gbps: m.gbps,
          pages: `${formatBytes(m.pageSize)} pages`,
        })),
      ]
    : raw;
  const chart = {
    mark: { type: 'line', point: true },
    encoding: {
      x: {
        field: 'bytes',
        type: 'quantitative',
        title: 'copy size',
        scale: { type: 'log', base: 2 },
        axis: {
          values: sizes,
          labelExpr:
            "datum.value >= 1073741824 ? datum.value / 1073741824 + ' GiB' : datum.value >= 1048576 ? " +
            "datum.value / 1048576 + ' MiB' : datum.value >= 1024 ? datum.value / 1024 + ' KiB' : datum.value + ' B'",
        },
      },
      y: { field: 'gbps', type: 'quantitative', title: 'GB/s (median)' },
      color: { field: 'path', type: 'nominal', title: 'path' },
    },
  };
  const head = { $schema: 'https://vega.github.io/schema/vega-lite/v6.json', title, background: 'white' };
  if (!pageSizes.length) return { ...head, width: 560, height: 320, data: { values }, ...chart };
  return {
    ...head,
    data: { values },
    facet: {
      column: {
        field: 'pages',
        type: 'nominal',
        title: null,
        sort: pageSizes.map((ps) => `${formatBytes(ps)} pages`),
      },
    },
    spec: { width: 300, height: 260, ...chart },
  };
}
