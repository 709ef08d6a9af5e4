/**
 * `hmmlab compare`: the same workloads under Kara's mirror, Glisse's migrate and `explicit`, a
 * program with no coherence at all (its own buffer; the data copied to the device before each
 * kernel and back after it, as a program without HMM does), measured the same way: host pages held
 * (the page cache's pool, plus the program's buffer for explicit; peak and time-averaged), device
 * frames held (peak), bytes copied each way, device faults and fault batches, pages reclaimed, and
 * wall time. Every figure is read from the counters, and the bytes are checked against the pages
 * the counters say moved (times the page size, to the byte); every run ends with the files on disk
 * checked against what the workload wrote.
 *
 * Workloads (D pages, K kernels): glisse-dataset (a dataset read from disk, then K kernels read it
 * on the GPU only: Glisse's case), glisse-dataset-pressure (the same while another file competes
 * for host pages: Kara's answer, reclaim dropping A and leaving device entries, at the cost of its
 * work), pingpong (CPU and GPU taking turns on the same pages through a shared mapping), read-mostly
 * (device reads, a rare device write, CPU reads with read(2)) and stream-write (the device writes a
 * new file, then fsync).
 *
 * Host pages held are sampled after every step; the average is over wall time (trapezoids between
 * samples); the peak is the pool's high-water mark. Setup (writing the files, dropping the cache)
 * is not measured.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  type DeviceCounters,
  DeviceMemory,
  type DevicePageTable,
  type FaultServicer,
} from '../device/index.ts';
import { HmmlabError } from '../errors.ts';
import type { File } from '../fs/hmmfs.ts';
import { HmmFs } from '../fs/hmmfs.ts';
import type { GpuDevice } from '../gpu/device.ts';
import { patternBytes } from '../oplog/pattern.ts';
import { DEVICE_POLICY_NAMES, type DevicePolicyName, openPolicy } from '../policy/registry.ts';
import { firstDifference } from './random.ts';

export const COMPARE_POLICIES = [...DEVICE_POLICY_NAMES, 'explicit'] as const;
export type ComparePolicy = (typeof COMPARE_POLICIES)[number];

export const WORKLOADS = [
  'glisse-dataset',
  'glisse-dataset-pressure',
  'pingpong',
  'read-mostly',
  'stream-write',
] as const;
export type WorkloadName = (typeof WORKLOADS)[number];

/** One step of a workload, as a program does it. */
type Step =
  | { kind: 'load'; file: string } // read(2) of the whole file: the program reads its data
  | { kind: 'read'; file: string } // read(2) of the whole file by another program (the page cache, any policy)
  | { kind: 'cpu-read'; file: string; via: 'read' | 'mmap' }
  | { kind: 'cpu-write'; file: string; via: 'write' | 'mmap'; off: number; len: number; tag: number }
  | { kind: 'kernel'; file: string; write: boolean; off: number; len: number; tag: number }
  | { kind: 'sync'; file: string };

interface FileSpec {
  name: string;
  pages: number;
  /** 'data': written (tag 1) and on disk before the run; 'hole': a file of holes (reads as zeros). */
  initial: 'data' | 'hole';
}

export interface Workload {
  name: WorkloadName;
  description: string;
  files: FileSpec[];
  hostPages: number;
  devicePages: number;
  steps: Step[];
}

export interface CompareOptions {
  /** Pages of the dataset (D), default 256. */
  pages?: number;
  /** Kernels (or rounds) of each workload (K), default 16. */
  kernels?: number;
  pageSize?: number;
}

export const COMPARE_DEFAULTS = { pages: 256, kernels: 16, pageSize: 4096 };

/** The workloads, for D pages and K kernels. */
export function workload(name: WorkloadName, o: CompareOptions = {}): Workload {
  const D = o.pages ?? COMPARE_DEFAULTS.pages;
  const K = o.kernels ?? COMPARE_DEFAULTS.kernels;
  const ps = o.pageSize ?? COMPARE_DEFAULTS.pageSize;
  const all = { off: 0, len: D * ps };
  const data: FileSpec = { name: 'dataset', pages: D, initial: 'data' };
  const rounds = (n: number, f: (k: number) => Step[]) => Array.from({ length: n }, (_, k) => f(k)).flat();
  const kernelRead = (file = 'dataset'): Step => ({ kind: 'kernel', file, write: false, ...all, tag: 0 });
  switch (name) {
    case 'glisse-dataset':
      return {
        name,
        description: 'a dataset read from disk, then kernels read it on the GPU only',
        files: [data],
        hostPages: D + 16,
        devicePages: D,
        steps: [{ kind: 'load', file: 'dataset' }, ...rounds(K, () => [kernelRead()])],
      };
    case 'glisse-dataset-pressure':
      return {
        name,
        description: 'the same while another file competes for host pages',
        files: [data, { name: 'other', pages: D, initial: 'data' }],
        hostPages: D + 16,
        devicePages: D,
        steps: [
          { kind: 'load', file: 'dataset' },
          ...rounds(K, () => [kernelRead(), { kind: 'read', file: 'other' } as Step]),
        ],
      };
    case 'pingpong':
      return {
        name,
        description: 'CPU and GPU take turns on the same pages (a shared mapping)',
        files: [data],
        hostPages: D + 16,
        devicePages: D,
        steps: [
          { kind: 'load', file: 'dataset' },
          ...rounds(Math.max(1, K / 4), (k): Step[] => [
            { kind: 'kernel', file: 'dataset', write: true, ...all, tag: 10 + k },
            { kind: 'cpu-read', file: 'dataset', via: 'mmap' },
            { kind: 'cpu-write', file: 'dataset', via: 'mmap', off: 0, len: D * ps, tag: 40 + k },
            kernelRead(),
          ]),
          { kind: 'sync', file: 'dataset' },
        ],
      };
    case 'read-mostly': {
      const few = Math.max(1, Math.floor(D / 16));
      return {
        name,
        description: 'device reads, a rare device write, CPU reads with read(2)',
        files: [data],
        hostPages: D + 16,
        devicePages: D,
        steps: [
          { kind: 'load', file: 'dataset' },
          ...rounds(K, (k): Step[] => [
            kernelRead(),
            ...(k % 4 === 3
              ? [{ kind: 'kernel', file: 'dataset', write: true, off: 0, len: few * ps, tag: 20 + k } as Step]
              : []),
            { kind: 'cpu-read', file: 'dataset', via: 'read' },
          ]),
          { kind: 'sync', file: 'dataset' },
        ],
      };
    }
    case 'stream-write':
      return {
        name,
        description: 'the device writes a new file, then fsync',
        files: [{ name: 'dataset', pages: D, initial: 'hole' }],
        hostPages: D + 16,
        devicePages: D,
        steps: [
          { kind: 'kernel', file: 'dataset', write: true, ...all, tag: 3 },
          { kind: 'sync', file: 'dataset' },
        ],
      };
  }
}

export interface CompareRow {
  workload: WorkloadName;
  policy: ComparePolicy;
  pages: number;
  pageSize: number;
  hostPagesPeak: number;
  hostPagesAvg: number;
  devicePagesPeak: number;
  bytesH2D: number;
  bytesD2H: number;
  /** Pages the counters say moved each way (bytes = pages x page size). */
  pagesH2D: number;
  pagesD2H: number;
  /** Device faults serviced (after coalescing), and raw. */
  faults: number;
  faultsRaw: number;
  batches: number;
  /** CPU page faults (pgfault). */
  cpuFaults: number;
  /** Host pages reclaim took (pgsteal). */
  reclaimed: number;
  seconds: number;
}

/** What the workload's files must hold: byte arrays updated by every write step. */
class Expected {
  readonly files = new Map<string, Uint8Array>();
  constructor(w: Workload, ps: number) {
    for (const f of w.files)
      this.files.set(
        f.name,
        f.initial === 'data' ? patternBytes(0, f.pages * ps, 1) : new Uint8Array(f.pages * ps),
      );
  }
  write(file: string, off: number, len: number, tag: number): void {
    this.files.get(file)!.set(patternBytes(off, len, tag), off);
  }
  check(what: string, file: string, got: Uint8Array, off = 0): void {
    const want = this.files.get(file)!.subarray(off, off + got.length);
    const d = firstDifference(got, want);
    if (d >= 0 || got.length !== want.length)
      throw new HmmlabError(
        'EIO',
        `compare: ${what} of ${file} differs from what the workload wrote at offset ${off + d}`,
      );
  }
}

/** Host pages over wall time: samples after each step, trapezoids between them. */
class HostSampler {
  private last: number;
  private area = 0;
  private t = 0;
  peak: number;
  constructor(start: number) {
    this.last = start;
    this.peak = start;
  }
  sample(pages: number, dt: number): void {
    this.area += ((this.last + pages) / 2) * dt;
    this.t += dt;
    this.last = pages;
    this.peak = Math.max(this.peak, pages);
  }
  get average(): number {
    return this.t > 0 ? this.area / this.t : this.last;
  }
}

/** How one policy runs the steps; the measurement around it is the same for all. */
interface Runner {
  step(s: Step): Promise<void>;
  hostPages(): number;
  finish(): Promise<void>;
}

/** The figures of a row that come from the counters. */
type Counts = Pick<
  CompareRow,
  | 'bytesH2D'
  | 'bytesD2H'
  | 'pagesH2D'
  | 'pagesD2H'
  | 'faults'
  | 'faultsRaw'
  | 'batches'
  | 'cpuFaults'
  | 'reclaimed'
>;

/**
 * The counters since now (after setup): bytes and faults from the device layer, pgfault and
 * pgsteal from the page cache, and the pages moved each way as `moved` reads them.
 */
function countsSince(
  hfs: HmmFs,
  dm: DeviceMemory,
  moved: (vm: (k: string) => number, dev: (k: keyof DeviceCounters) => number) => [number, number],
): () => Counts {
  const base = { vm: hfs.vmstat(), dev: { ...dm.counters } };
  return () => {
    const v = hfs.vmstat();
    const vm = (k: string) => (v[k] ?? 0) - (base.vm[k] ?? 0);
    const dev = (k: keyof DeviceCounters) => dm.counters[k] - base.dev[k];
    const [pagesH2D, pagesD2H] = moved(vm, dev);
    return {
      bytesH2D: dev('bytesHostToDevice'),
      bytesD2H: dev('bytesDeviceToHost'),
      pagesH2D,
      pagesD2H,
      faults: dev('faultsUnique'),
      faultsRaw: dev('faultsRaw'),
      batches: dev('batches'),
      cpuFaults: vm('pgfault'),
      reclaimed: vm('pgsteal'),
    };
  };
}

async function setupFiles(hfs: HmmFs, w: Workload, ps: number): Promise<Map<string, File>> {
  const files = new Map<string, File>();
  for (const spec of w.files) {
    const f = await hfs.open(spec.name, { create: true });
    if (spec.initial === 'data') {
      for (let p = 0; p < spec.pages; p += 64) {
        const n = Math.min(64, spec.pages - p);
        await f.write(p * ps, patternBytes(p * ps, n * ps, 1));
      }
    } else {
      await f.truncate(spec.pages * ps);
    }
    await f.fsync();
    files.set(spec.name, f);
  }
  await hfs.dropCaches();
  return files;
}

/** Mirror or migrate: the program uses the file through the page cache; the device faults. */
async function hmmRunner(
  gpu: GpuDevice,
  name: DevicePolicyName,
  w: Workload,
  ps: number,
  dir: string,
  want: Expected,
): Promise<{ runner: Runner; counts: () => Counts; dm: DeviceMemory; hfs: HmmFs }> {
  const opened = await openPolicy(name, gpu, { devicePages: w.devicePages, pageSize: ps, batchSize: 256 });
  const dm = opened.dm!;
  const hfs = await HmmFs.mount({ dir, pageSize: ps, hostPages: w.hostPages, policy: opened.policy });
  const files = await setupFiles(hfs, w, ps);
  const vmas = new Map<string, ReturnType<File['mmap']>>();
  const vma = (file: string) => {
    let v = vmas.get(file);
    if (!v) {
      v = files.get(file)!.mmap(files.get(file)!.size);
      vmas.set(file, v);
    }
    return v;
  };
  const runner: Runner = {
    async step(s) {
      const f = files.get(s.file)!;
      switch (s.kind) {
        case 'load':
        case 'read':
          want.check('read(2)', s.file, await f.read(0, f.size));
          return;
        case 'cpu-read':
          want.check(
            s.via,
            s.file,
            s.via === 'read' ? await f.read(0, f.size) : await vma(s.file).load(0, f.size),
          );
          return;
        case 'cpu-write': {
          const bytes = patternBytes(s.off, s.len, s.tag);
          if (s.via === 'write') await f.write(s.off, bytes);
          else await vma(s.file).store(s.off, bytes);
          want.write(s.file, s.off, s.len, s.tag);
          return;
        }
        case 'kernel':
          if (s.write) {
            await f.deviceWrite(s.off, s.len, s.tag);
            want.write(s.file, s.off, s.len, s.tag);
          } else {
            want.check('devread', s.file, await f.deviceRead(s.off, s.len), s.off);
          }
          return;
        case 'sync':
          await f.fsync();
          return;
      }
    },
    hostPages: () => hfs.pageCache.pool.nrPages - hfs.pageCache.pool.nrFree,
    async finish() {
      await hfs.unmount();
      opened.close();
    },
  };
  // The pages the policy's counters say moved: fault service and bounce writes in, copy-backs and bounce reads out.
  const counts = countsSince(hfs, dm, (d) => [
    d('device_copies_to_device') + d('device_bounce_writes'),
    d('device_copybacks') + d('device_bounce_reads'),
  ]);
  return { runner, counts, dm, hfs };
}

/** A fault servicer for pages that are all mapped: a fault is a bug of the baseline. */
const noFaults: FaultServicer = async (faults) => {
  throw new HmmlabError(
    'EINVAL',
    `explicit: pages ${faults.map((f) => f.index).join(',')} faulted: all are mapped`,
  );
};

/**
 * `explicit`: a program without HMM. It reads the file into its own buffer, keeps device buffers
 * for it (every page mapped, no faults), copies the data to the device before each kernel and back
 * after it, and writes the buffer back with write(2) + fsync. Host pages held: the page cache's and
 * the buffer's.
 */
async function explicitRunner(
  gpu: GpuDevice,
  w: Workload,
  ps: number,
  dir: string,
  want: Expected,
): Promise<{ runner: Runner; counts: () => Counts; dm: DeviceMemory; hfs: HmmFs }> {
  const dm = await DeviceMemory.create(gpu, { devicePages: w.devicePages, pageSize: ps });
  const hfs = await HmmFs.mount({ dir, pageSize: ps, hostPages: w.hostPages });
  const files = await setupFiles(hfs, w, ps);
  const buffers = new Map<string, Uint8Array>();
  const device = new Map<string, { space: DevicePageTable; frames: number[] }>();
  const buffer = (file: string) => {
    let b = buffers.get(file);
    if (!b) {
      b = new Uint8Array(files.get(file)!.size);
      buffers.set(file, b);
    }
    return b;
  };
  let spaceId = 1_000_000;
  const deviceBuffer = async (file: string) => {
    let d = device.get(file);
    if (!d) {
      const space = dm.space(spaceId++);
      const n = Math.ceil(files.get(file)!.size / ps);
      const indices = Array.from({ length: n }, (_, i) => i);
      const frames = (await dm.allocFrames(space, indices)).map((f, i) => {
        if (f === null) throw new HmmlabError('ENOMEM', `explicit: no device frame for page ${i} of ${file}`);
        return f;
      });
      await dm.map(
        space,
        indices.map((index) => ({ index, frame: frames[index], perm: 'rw' as const })),
      );
      d = { space, frames };
      device.set(file, d);
    }
    return d;
  };
  const runner: Runner = {
    async step(s) {
      const f = files.get(s.file)!;
      switch (s.kind) {
        case 'load': {
          const bytes = await f.read(0, f.size);
          buffer(s.file).set(bytes);
          want.check('read(2)', s.file, bytes);
          return;
        }
        case 'read':
          want.check('read(2)', s.file, await f.read(0, f.size));
          return;
        case 'cpu-read':
          want.check('its buffer', s.file, buffer(s.file));
          return;
        case 'cpu-write':
          buffer(s.file).set(patternBytes(s.off, s.len, s.tag), s.off);
          want.write(s.file, s.off, s.len, s.tag);
          return;
        case 'kernel': {
          const b = buffer(s.file);
          const { space, frames } = await deviceBuffer(s.file);
          const first = Math.floor(s.off / ps);
          const last = Math.floor((s.off + s.len - 1) / ps);
          const range = frames.slice(first, last + 1);
          // Before the kernel: the data to the device; after it: back, as cudaMemcpy each way.
          await dm.copyToFrames(
            range.map((frame, k) => ({ frame, data: b.subarray((first + k) * ps, (first + k + 1) * ps) })),
          );
          const r = await dm.runKernel(s.write ? 'devwrite' : 'devread', space, s, noFaults);
          const back = await dm.copyFromFrames(range);
          back.forEach((page, k) => {
            b.set(page.subarray(0, Math.min(ps, b.length - (first + k) * ps)), (first + k) * ps);
          });
          if (s.write) want.write(s.file, s.off, s.len, s.tag);
          else want.check('devread', s.file, r.bytes!, s.off);
          return;
        }
        case 'sync':
          await f.write(0, buffer(s.file));
          await f.fsync();
          return;
      }
    },
    hostPages: () =>
      hfs.pageCache.pool.nrPages -
      hfs.pageCache.pool.nrFree +
      [...buffers.values()].reduce((n, b) => n + Math.ceil(b.length / ps), 0),
    async finish() {
      for (const { space, frames } of device.values()) {
        await dm.revoke(space, [...frames.keys()]);
        dm.freeFrames(frames);
        dm.forget(space.id);
      }
      await hfs.unmount();
      dm.destroy();
    },
  };
  // The pages the device layer copied for the program (its own counters: no policy).
  const counts = countsSince(hfs, dm, (_d, dev) => [dev('copiesToDevice'), dev('copiesFromDevice')]);
  return { runner, counts, dm, hfs };
}

/** Run workload `w` under `policy` on `gpu`: one row of the comparison. */
export async function runComparison(
  gpu: GpuDevice,
  w: Workload,
  policy: ComparePolicy,
  o: CompareOptions = {},
): Promise<CompareRow> {
  const ps = o.pageSize ?? COMPARE_DEFAULTS.pageSize;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hmmlab-compare-'));
  const want = new Expected(w, ps);
  try {
    const { runner, counts, dm, hfs } =
      policy === 'explicit'
        ? await explicitRunner(gpu, w, ps, dir, want)
        : await hmmRunner(gpu, policy, w, ps, dir, want);
    let finished = false;
    try {
      hfs.pageCache.pool.resetPeak();
      dm.pool.resetPeak();
      const host = new HostSampler(runner.hostPages());
      let seconds = 0;
      let extraPeak = 0;
      for (const s of w.steps) {
        const t0 = performance.now();
        await runner.step(s);
        const dt = (performance.now() - t0) / 1000;
        seconds += dt;
        const pages = runner.hostPages();
        host.sample(pages, dt);
        // explicit: its buffer on top of the page cache's high-water mark
        extraPeak = Math.max(extraPeak, pages - (hfs.pageCache.pool.nrPages - hfs.pageCache.pool.nrFree));
      }
      const c = counts();
      if (c.bytesH2D !== c.pagesH2D * ps || c.bytesD2H !== c.pagesD2H * ps) {
        throw new HmmlabError(
          'EIO',
          `compare ${w.name} ${policy}: bytes copied (${c.bytesH2D} h2d, ${c.bytesD2H} d2h) are not the pages moved ` +
            `(${c.pagesH2D}, ${c.pagesD2H}) times ${ps}`,
        );
      }
      const row: CompareRow = {
        workload: w.name,
        policy,
        pages: w.files[0].pages,
        pageSize: ps,
        hostPagesPeak: Math.max(host.peak, hfs.pageCache.pool.peak + extraPeak),
        hostPagesAvg: Math.round(host.average * 10) / 10,
        devicePagesPeak: dm.pool.peak,
        ...c,
        seconds: Math.round(seconds * 1000) / 1000,
      };
      await runner.finish();
      finished = true;
      // Everything the workload wrote is on disk (unmount wrote back what the device held).
      for (const spec of w.files) {
        const disk = new Uint8Array(fs.readFileSync(path.join(dir, spec.name)));
        want.check('the file on disk after unmount', spec.name, disk);
      }
      return row;
    } finally {
      if (!finished) await runner.finish().catch(() => {});
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Every workload named (or all) under every policy, in order. */
export async function compare(
  gpu: GpuDevice,
  names: readonly WorkloadName[],
  o: CompareOptions = {},
  onRow?: (r: CompareRow) => void,
): Promise<CompareRow[]> {
  const rows: CompareRow[] = [];
  for (const name of names) {
    const w = workload(name, o);
    for (const policy of COMPARE_POLICIES) {
      const r = await runComparison(gpu, w, policy, o);
      rows.push(r);
      onRow?.(r);
    }
  }
  return rows;
}

const kib = (b: number) => (b / 1024).toFixed(0);

/** The comparison as a table, one row per workload and policy. */
export function formatCompareTable(rows: readonly CompareRow[]): string {
  const head = [
    'workload',
    'policy',
    'host peak',
    'host avg',
    'dev peak',
    'h2d KiB',
    'd2h KiB',
    'faults',
    'batches',
    'reclaimed',
    'seconds',
  ];
  const body = rows.map((r) => [
    r.workload,
    r.policy,
    String(r.hostPagesPeak),
    r.hostPagesAvg.toFixed(1),
    String(r.devicePagesPeak),
    kib(r.bytesH2D),
    kib(r.bytesD2H),
    String(r.faults),
    String(r.batches),
    String(r.reclaimed),
    r.seconds.toFixed(3),
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i < 2 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  return [line(head), ...body.map(line)].join('\n');
}

/** vega-lite: host pages held (time-averaged) and MiB copied, per workload, one bar per policy. */
export function compareChartSpec(rows: readonly CompareRow[], title: string): Record<string, unknown> {
  const data = rows.flatMap((r) => [
    { workload: r.workload, policy: r.policy, measure: 'host pages held (avg)', value: r.hostPagesAvg },
    {
      workload: r.workload,
      policy: r.policy,
      measure: 'MiB copied (both ways)',
      value: (r.bytesH2D + r.bytesD2H) / 2 ** 20,
    },
  ]);
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title,
    data: { values: data },
    facet: {
      row: { field: 'measure', type: 'nominal', title: null },
      column: { field: 'workload', type: 'nominal' },
    },
    resolve: { scale: { y: 'independent' } },
    spec: {
      width: 90,
      height: 140,
      mark: 'bar',
      encoding: {
        x: { field: 'policy', type: 'nominal', axis: { labelAngle: -40 }, sort: [...COMPARE_POLICIES] },
        y: { field: 'value', type: 'quantitative', title: null },
        color: { field: 'policy', type: 'nominal', sort: [...COMPARE_POLICIES] },
      },
    },
  };
}
