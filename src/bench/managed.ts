/**
 * The page cache's own copies against the raw ceiling (`hmmlab bench copy --managed`): per size and
 * page size, under each policy,
 *   managed-h2d   File.devicePrefetch of the file's cached pages (clean, read in beforehand): the
 *                 pages to the device with no kernel, as a device read fault brings them (mirror:
 *                 a read-only copy A'; migrate: the page moves)
 *   managed-d2h   read(2) of pages the device wrote (a devwrite beforehand): mirror pulls each back
 *                 beside its copy, migrate reads it through a bounce page
 * each timed alone, the data checked after it (the device's copies read back and compared; the
 * bytes read(2) returned). Every sample runs on a fresh mount over the same file (the set-up
 * untimed). `ratio` is the row's GB/s over the fastest raw path in the same direction at the same
 * size, measured in the same run (src/bench/copy.ts).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeviceMemory } from '../device/index.ts';
import { HmmlabError } from '../errors.ts';
import { type File, HmmFs } from '../fs/hmmfs.ts';
import type { GpuDevice } from '../gpu/device.ts';
import { patternBytes } from '../oplog/pattern.ts';
import { createDevicePolicy, DEVICE_POLICY_NAMES, type DevicePolicyName } from '../policy/registry.ts';
import type { CopyBenchRow } from './copy.ts';
import { firstDifference } from './random.ts';
import { gbps, summarize } from './stats.ts';
import { formatTable } from './table.ts';
import { formatBytes } from './units.ts';

export const MANAGED_PATHS = ['managed-h2d', 'managed-d2h'] as const;
export type ManagedPath = (typeof MANAGED_PATHS)[number];

/** 1 MiB to 256 MiB by powers of 4. */
export const DEFAULT_MANAGED_SIZES = [1, 4, 16, 64, 256].map((m) => m << 20);
export const DEFAULT_MANAGED_PAGE_SIZES = [4096, 65536, 2 << 20];
/** Timed samples (after a warm-up): a sample of 256 MiB takes seconds on a software adapter. */
export const DEFAULT_MANAGED_ITERS = 3;
const TAG_FILE = 1;
const TAG_DEVICE = 2;

export interface ManagedRow {
  path: ManagedPath;
  policy: DevicePolicyName;
  pageSize: number;
  bytes: number;
  /** Median GB/s over the samples, and the spread. */
  gbps: number;
  min: number;
  max: number;
  samples: number;
  /** gbps over the fastest raw path in the same direction at the same size (same run). */
  ratio: number;
  /** That raw path. */
  rawPath: string;
  rawGbps: number;
  /** The raw path of the same kind the managed copy uses (the staging ring, or mapped readback), and gbps over it. */
  samePath: string;
  sameRatio: number;
  /** Every sample's data matched. */
  verified: boolean;
}

export interface ManagedOptions {
  sizes?: readonly number[];
  pageSizes?: readonly number[];
  policies?: readonly DevicePolicyName[];
  iters?: number;
  warmup?: number;
  dir?: string;
  onProgress?: (done: number, total: number, what: string) => void;
}

/** Whether a size holds a whole number of pages of `pageSize` (other sizes are left out of that page size). */
function fits(size: number, pageSize: number): boolean {
  return size >= pageSize && size % pageSize === 0;
}

/** The managed rows start at 1 MiB (the targets' sizes). */
export const MIN_MANAGED_BYTES = 1 << 20;

/**
 * The sizes of `sizes` the managed rows measure (1 MiB and more); EINVAL naming the flags when none
 * is left, or none holds a whole page of any page size asked, before a device is opened.
 */
export function managedSizes(sizes: readonly number[], pageSizes: readonly number[]): number[] {
  const out = sizes.filter((n) => n >= MIN_MANAGED_BYTES);
  if (out.length === 0) {
    throw new HmmlabError(
      'EINVAL',
      `bench copy --managed: the managed rows are measured at 1 MiB and more; --sizes has no such size (${sizes.map(formatBytes).join(', ')})`,
    );
  }
  if (!out.some((n) => pageSizes.some((ps) => fits(n, ps)))) {
    throw new HmmlabError(
      'EINVAL',
      `bench copy --managed: no size of ${out.map(formatBytes).join(', ')} holds a whole number of pages of ` +
        `${pageSizes.map(formatBytes).join(', ')} (--sizes, --page-sizes)`,
    );
  }
  return out;
}

/** Mount `dir` with `policy` on `dm`, the file cached (read whole: clean pages, untimed). */
async function mountCached(
  dir: string,
  pageSize: number,
  size: number,
  policy: DevicePolicyName,
  dm: DeviceMemory,
): Promise<{ fs: HmmFs; f: File }> {
  const fs = await HmmFs.mount({
    dir,
    pageSize,
    hostPages: size / pageSize + 64,
    policy: createDevicePolicy(policy, dm),
    maxFileSize: Math.max(1 << 30, size),
  });
  const f = await fs.open('managed.dat');
  await readAll(f, size, buffer(size));
  return { fs, f };
}

/** read(2) of the whole file into `out` (a buffer the caller keeps: touched once), 16 MiB a call. */
async function readAll(f: File, size: number, out: Uint8Array): Promise<Uint8Array> {
  const step = 16 << 20;
  for (let off = 0; off < size; off += step) {
    const n = Math.min(step, size - off);
    await f.read(off, n, out.subarray(off, off + n));
  }
  return out.subarray(0, size);
}

let reader: Uint8Array | undefined;

/**
 * The reader's buffer: allocated once at the largest size and kept, as the raw benchmark keeps its
 * host arrays (first touch of new memory runs at ~1 GB/s on these VMs, slower than any copy here).
 */
function buffer(size: number): Uint8Array {
  if (!reader || reader.byteLength < size) reader = new Uint8Array(size);
  return reader;
}

/** The managed rows, measured; `raw` are the raw rows of the same run (their ratios' base). */
export async function benchManaged(
  gpu: GpuDevice,
  raw: readonly CopyBenchRow[],
  options: ManagedOptions = {},
): Promise<ManagedRow[]> {
  const sizes = options.sizes ?? DEFAULT_MANAGED_SIZES;
  const pageSizes = options.pageSizes ?? DEFAULT_MANAGED_PAGE_SIZES;
  const policies = options.policies ?? DEVICE_POLICY_NAMES;
  const iters = options.iters ?? DEFAULT_MANAGED_ITERS;
  const warmup = options.warmup ?? 1;
  const jobs: { size: number; pageSize: number; policy: DevicePolicyName; path: ManagedPath }[] = [];
  for (const pageSize of pageSizes)
    for (const size of sizes)
      if (fits(size, pageSize))
        for (const policy of policies)
          for (const path of MANAGED_PATHS) jobs.push({ size, pageSize, policy, path });
  if (jobs.length === 0) {
    throw new HmmlabError(
      'EINVAL',
      'bench copy --managed: no size holds a whole page of any page size asked',
    );
  }
  const own = options.dir === undefined;
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'hmmlab-bench-managed-'));
  const rows: ManagedRow[] = [];
  const perJob = warmup + iters;
  const total = jobs.length * perJob;
  let done = 0;
  try {
    let written = { size: 0, pageSize: 0 };
    for (const job of jobs) {
      const { size, pageSize, policy, path } = job;
      if (written.size !== size || written.pageSize !== pageSize) {
        await writeFile(dir, pageSize, size);
        written = { size, pageSize };
      }
      const dm = await DeviceMemory.create(gpu, { devicePages: size / pageSize, pageSize });
      const rates: number[] = [];
      let verified = true;
      try {
        for (let i = 0; i < perJob; i++) {
          options.onProgress?.(
            done++,
            total,
            `${path} ${policy} ${formatBytes(size)} pages ${formatBytes(pageSize)}`,
          );
          const s = await gpu.scoped(`bench copy ${path}`, () =>
            path === 'managed-h2d'
              ? sampleH2d({ dir, pageSize, size, policy, dm })
              : sampleD2h({ dir, pageSize, size, policy, dm }),
          );
          verified &&= s.verified;
          if (i >= warmup) rates.push(gbps(size, s.ms));
        }
      } finally {
        dm.destroy();
      }
      // managed-d2h writes the device's pattern through to the file: the next size starts afresh.
      if (path === 'managed-d2h') written = { size: 0, pageSize: 0 };
      const sum = summarize(rates);
      const dir2 = path === 'managed-h2d' ? 'h2d' : 'd2h';
      const same = raw.filter((r) => r.bytes === size && r.path.startsWith(dir2));
      const best = same.reduce<CopyBenchRow | undefined>(
        (a, b) => (!a || b.gbps > a.gbps ? b : a),
        undefined,
      );
      const sameKind = raw.find(
        (r) => r.bytes === size && r.path === (dir2 === 'h2d' ? 'h2d-staging' : 'd2h-mapread'),
      );
      rows.push({
        path,
        policy,
        pageSize,
        bytes: size,
        gbps: sum.median,
        min: sum.min,
        max: sum.max,
        samples: sum.samples,
        ratio: best ? sum.median / best.gbps : Number.NaN,
        rawPath: best?.path ?? '',
        rawGbps: best?.gbps ?? Number.NaN,
        samePath: sameKind?.path ?? '',
        sameRatio: sameKind ? sum.median / sameKind.gbps : Number.NaN,
        verified,
      });
    }
  } finally {
    if (own) rmSync(dir, { recursive: true, force: true });
  }
  options.onProgress?.(total, total, '');
  return rows;
}

/** The file: `size` bytes of the op-log pattern (tag 1), fsynced. */
async function writeFile(dir: string, pageSize: number, size: number): Promise<void> {
  const fs = await HmmFs.mount({ dir, pageSize, hostPages: 1024, maxFileSize: Math.max(1 << 30, size) });
  try {
    const f = await fs.open('managed.dat', { create: true });
    await f.truncate(0);
    const step = 4 << 20;
    for (let off = 0; off < size; off += step) {
      const n = Math.min(step, size - off);
      await f.write(off, patternBytes(off, n, TAG_FILE));
    }
    await f.fsync();
  } finally {
    await fs.unmount();
  }
}

/** Where a sample runs: the file's directory, its page size and size, the policy, the device memory. */
interface SampleAt {
  dir: string;
  pageSize: number;
  size: number;
  policy: DevicePolicyName;
  dm: DeviceMemory;
}

/** A sample's run on a fresh mount with the file cached (the set-up untimed), unmounted after. */
async function onMount<T>(at: SampleAt, fn: (f: File) => Promise<T>): Promise<T> {
  const { fs, f } = await mountCached(at.dir, at.pageSize, at.size, at.policy, at.dm);
  try {
    return await fn(f);
  } finally {
    await fs.unmount();
  }
}

/** One managed-h2d sample: the cached pages prefetched to the device (timed), then checked there. */
function sampleH2d(at: SampleAt): Promise<{ ms: number; verified: boolean }> {
  const { pageSize, size, dm } = at;
  return onMount(at, async (f) => {
    const t0 = performance.now();
    const r = await f.devicePrefetch(0, size);
    await dm.drain('bench copy managed-h2d'); // the copies have landed
    const ms = performance.now() - t0;
    // The device's copies hold the file: devread them (no fault: every page is mapped).
    const faults = dm.counters.faultsUnique;
    const got = await f.deviceRead(0, size);
    const verified =
      r.granted === size / pageSize &&
      dm.counters.faultsUnique === faults &&
      firstDifference(got, patternBytes(0, size, TAG_FILE)) < 0;
    return { ms, verified };
  });
}

/** One managed-d2h sample: the device writes every page (untimed), read(2) pulls them back (timed). */
function sampleD2h(at: SampleAt): Promise<{ ms: number; verified: boolean }> {
  const { size } = at;
  return onMount(at, async (f) => {
    await f.devicePrefetch(0, size, true);
    await f.deviceWrite(0, size, TAG_DEVICE);
    const out = buffer(size);
    out.fill(0, 0, size);
    const t0 = performance.now();
    const got = await readAll(f, size, out);
    const ms = performance.now() - t0;
    return { ms, verified: firstDifference(got, patternBytes(0, size, TAG_DEVICE)) < 0 };
  });
}

/** The targets of the managed rows: each at least 0.9 of the fastest raw path, at 1 MiB and more. */
export function managedTargets(rows: readonly ManagedRow[]) {
  return rows
    .filter((r) => r.bytes >= 1 << 20)
    .map((r) => ({
      name: `${r.path} at ${formatBytes(r.bytes)}, ${formatBytes(r.pageSize)} pages`,
      policy: r.policy,
      measure: `GB/s over ${r.rawPath} (${r.rawGbps.toFixed(2)} GB/s)`,
      target: 0.9,
      measured: r.ratio,
      met: r.ratio >= 0.9,
      /** target / measured: how many times short of it (1 = met). */
      ratio: r.ratio >= 0.9 ? 1 : 0.9 / r.ratio,
    }));
}

/** The terminal table of the managed rows. */
export function formatManagedTable(rows: readonly ManagedRow[]): string {
  const head = ['path', 'policy', 'page', 'size', 'GB/s', 'min', 'max', 'ratio', 'over', 'vs same', 'ok'];
  const body = rows.map((r) => [
    r.path,
    r.policy,
    formatBytes(r.pageSize),
    formatBytes(r.bytes),
    r.gbps.toFixed(2),
    r.min.toFixed(2),
    r.max.toFixed(2),
    r.ratio.toFixed(2),
    r.rawPath,
    `${r.sameRatio.toFixed(2)} ${r.samePath}`,
    r.verified ? 'yes' : 'NO',
  ]);
  return formatTable(head, body, (i) => i < 4 || i >= 8);
}
