/**
 * `hmmlab bench scale`: what an op costs per page, and how much memory the process holds, as the
 * file grows with the budgets fixed (4 MiB of host pages and 4 MiB of device frames by default).
 * Glisse's case from the 2016 thread: a dataset read from disk, then used by the GPU.
 *
 * For each file size, in a fresh process (so that its peak resident memory is its own), after two
 * warm-up passes over a file of 16 MiB, on a fresh mount with the mirror policy: write(2) the whole file (the op-log pattern, tag 1, 4 MiB a call),
 * fsync, read(2) it all, devread it all (streamed to a sink), devwrite it all (tag 2), fsync again
 * (the device-written data goes to disk). Each op is timed alone; the peak resident memory is
 * reset before each (/proc/self/clear_refs) and read after it (VmHWM). Sizes under 256 MiB run
 * several times (up to 5) and report each op's median. Every byte is checked: the
 * reads and the devread against the pattern as they come (not timed), the disk after the last fsync.
 *
 * The cost per page is the op's time over the file's pages, in wall time and in CPU time of the
 * whole process (every thread: on a software adapter the GPU is CPU threads too; on a shared
 * machine CPU time is the steadier figure). An fsync writes back what reclaim and eviction left
 * dirty (at most the budgets) and the kernel's fdatasync flushes what was written since the last
 * one (the file): its rows also count the pages it wrote itself.
 */
import { open, rm } from 'node:fs/promises';
import { DeviceMemory, MAX_DEVICE_PAGES } from '../device/index.ts';
import { HmmlabError } from '../errors.ts';
import { HmmFs } from '../fs/hmmfs.ts';
import type { GpuDevice } from '../gpu/device.ts';
import { fillPattern } from '../oplog/pattern.ts';
import type { DevicePolicy } from '../policy/device.ts';
import { MirrorPolicy } from '../policy/mirror.ts';
import { firstDifference } from './random.ts';
import { currentRss, peakRss, resetPeakRss } from './rss.ts';
import { formatTable } from './table.ts';
import { formatBytes } from './units.ts';

export const SCALE_OPS = ['write', 'fsync', 'read', 'devread', 'devwrite', 'fsync-device'] as const;
export type ScaleOp = (typeof SCALE_OPS)[number];

/** What each op of a size does, for the table's legend and the JSON. */
export const SCALE_OP_TEXT: Record<ScaleOp, string> = {
  write: 'write(2) of the whole file, 4 MiB a call (tag 1)',
  fsync: 'fsync after the write: the dirty pages reclaim left',
  read: 'read(2) of the whole file, 4 MiB a call',
  devread: 'devread of the whole file, streamed chunk by chunk',
  devwrite: 'devwrite of the whole file (tag 2)',
  'fsync-device': 'fsync after the devwrite: device-written pages copied back and written',
};

/** The policies with a device that a run can use: a new one joins here. */
export const SCALE_POLICIES: Record<string, (dm: DeviceMemory) => DevicePolicy> = {
  mirror: (dm) => new MirrorPolicy(dm),
};

const MiB = 1 << 20;
const GiB = 1 << 30;
/** 16 MiB up by powers of 4: to 4 GiB (256x) on a software adapter, to 64 GiB on a GPU. */
export const SCALE_SIZES = [16 * MiB, 64 * MiB, 256 * MiB, GiB, 4 * GiB, 16 * GiB, 64 * GiB];
/** A software adapter runs the default sweep up to this (about four minutes on 2 lavapipe cores). */
export const SOFTWARE_DEFAULT_MAX = 4 * GiB;
export const HARDWARE_DEFAULT_MAX = 64 * GiB;
/** Bytes each write(2) and read(2) call moves, as replay streams long ops. */
const CALL_BYTES = 4 * MiB;

export interface ScaleSettings {
  pageSize: number;
  hostPages: number;
  devicePages: number;
  policy: string;
  /** Kernel chunk (DeviceMemoryOptions.chunkBytes); the device's default when absent. */
  chunkBytes?: number;
}

/**
 * 4 MiB of host pages and 4 MiB of device frames: a quarter of the smallest file, so that every
 * size runs past both budgets (reclaim, eviction) and the sizes differ only in how long they run.
 */
export const DEFAULT_SCALE_SETTINGS: ScaleSettings = {
  pageSize: 4096,
  hostPages: 1024,
  devicePages: 1024,
  policy: 'mirror',
};

export interface ScaleRow {
  size: number;
  op: ScaleOp;
  /** Pages of the file. */
  pages: number;
  ms: number;
  /** ms * 1000 / pages. */
  usPerPage: number;
  /** CPU time of the whole process (every thread: lavapipe's too) in the op, and per page. */
  cpuMs: number;
  cpuUsPerPage: number;
  /** Of cpuMs, the time in the kernel (pread, pwrite, fdatasync, the OS's own page cache). */
  sysMs: number;
  /** For an fsync: the pages it wrote back itself (the rest reclaim and eviction had written). */
  written: number;
  /** File bytes moved per second (the file's size over the op's time). */
  gbps: number;
  /** Peak resident memory of the process during the op (VmHWM after a reset), bytes. */
  peakRss: number;
  /** Runs of the size this row is the median of (short sizes are repeated). */
  runs?: number;
}

export interface ScaleSizeResult {
  size: number;
  rows: ScaleRow[];
  /** Resident memory with the device open and the file mounted, before the first op. */
  baseRss: number;
  /** The largest peak of the size's ops. */
  peakRss: number;
  /** Every byte read, and the disk after the last fsync, matched the pattern. */
  verified: boolean;
}

// ---- limits ----

/**
 * The largest size a run may use: the file must fit the free disk (with a quarter to spare) and
 * the device's address space (2^31 pages; a page table of a PTE per page within maxBufferSize).
 */
export function scaleSizeCap(gpu: GpuDevice, pageSize: number, freeDisk: number): number {
  const tablePages = Math.min(MAX_DEVICE_PAGES, Math.floor(gpu.limits.maxBufferSize / 4));
  return Math.min(Math.floor((freeDisk * 3) / 4), tablePages * pageSize);
}

/** The default sweep clamped to the cap (and, on a software adapter, to SOFTWARE_DEFAULT_MAX). */
export function defaultScaleSizes(cap: number, software: boolean, pageSize: number): number[] {
  const max = Math.min(cap, software ? SOFTWARE_DEFAULT_MAX : HARDWARE_DEFAULT_MAX);
  const sizes = SCALE_SIZES.filter((s) => s <= max && s >= pageSize);
  if (sizes.length === 0) {
    throw new HmmlabError(
      'ELIMIT',
      `bench scale: not even ${formatBytes(SCALE_SIZES[0])} fits (${formatBytes(cap)} free)`,
    );
  }
  return sizes;
}

/** Explicit sizes: whole pages, within the cap (ELIMIT naming it). */
export function checkScaleSizes(sizes: number[], cap: number, pageSize: number): void {
  for (const s of sizes) {
    if (s % pageSize !== 0) {
      throw new HmmlabError(
        'EINVAL',
        `bench scale: size ${s} is not a whole number of ${pageSize}-byte pages`,
      );
    }
    if (s > cap) {
      throw new HmmlabError(
        'ELIMIT',
        `bench scale: size ${formatBytes(s)} is over this machine's limit of ${formatBytes(cap)} (free disk, the device's page table)`,
      );
    }
  }
}

// ---- one size ----

/** Compares bytes with the op-log pattern of `tag` as they come, a chunk at a time. */
class PatternCheck {
  private scratch = new Uint8Array(0);
  constructor(
    private readonly tag: number,
    private readonly what: string,
  ) {}

  check(bytes: Uint8Array, off: number): void {
    if (this.scratch.length < bytes.length) this.scratch = new Uint8Array(bytes.length);
    const want = fillPattern(this.scratch.subarray(0, bytes.length), off, this.tag);
    const d = firstDifference(bytes, want);
    if (d >= 0) {
      throw new HmmlabError(
        'EIO',
        `bench scale: ${this.what}: byte at file offset ${off + d} is ${bytes[d]}, the pattern of tag ${this.tag} says ${want[d]}`,
      );
    }
  }
}

/**
 * Run the ops of one size on `gpu` in a fresh mount under `dir`, after warm-up passes on a small
 * file; `onRow` hears each measured op as it ends.
 */
export async function runScaleSize(
  gpu: GpuDevice,
  size: number,
  settings: ScaleSettings,
  dir: string,
  onRow?: (row: ScaleRow) => void,
): Promise<ScaleSizeResult> {
  // Warm-up passes first, on a file of 16 MiB (or twice the larger budget) and a mount of their
  // own, with the same device memory: the JIT (the first two passes of a process run up to 1.7x
  // slower) and the pipelines' first dispatches are not what a small size should measure.
  const budget = Math.max(settings.hostPages, settings.devicePages) * settings.pageSize;
  const warm = Math.min(size, Math.max(2 * budget, 16 * MiB));
  const dm = await DeviceMemory.create(gpu, {
    devicePages: settings.devicePages,
    pageSize: settings.pageSize,
    chunkBytes: settings.chunkBytes,
  });
  try {
    for (let k = 0; k < WARM_UPS; k++) await runScaleOps({ dm, size: warm, settings, dir });
    // Short runs are repeated (the median op of each kind is reported, the largest peak memory):
    // one run of a small file is a fraction of a second, and a shared machine's noise is not.
    const reps = Math.max(1, Math.min(SCALE_REPEATS, Math.floor(REPEAT_BELOW / size)));
    const runs: ScaleSizeResult[] = [];
    for (let k = 0; k < reps; k++) {
      runs.push(await runScaleOps({ dm, size, settings, dir, onRow: k === reps - 1 ? onRow : undefined }));
    }
    return medianRun(runs);
  } finally {
    dm.destroy();
  }
}

const WARM_UPS = 2;
/** Runs of one size at most; sizes below REPEAT_BELOW run REPEAT_BELOW / size times. */
export const SCALE_REPEATS = 5;
const REPEAT_BELOW = 256 * MiB;

/** Each op's median row over the runs (by wall time), with the largest peak memory any run saw. */
function medianRun(runs: ScaleSizeResult[]): ScaleSizeResult {
  const rows = SCALE_OPS.map((op) => {
    const all = runs.map((r) => r.rows.find((x) => x.op === op)!).sort((a, b) => a.ms - b.ms);
    return {
      ...all[Math.floor(all.length / 2)],
      peakRss: Math.max(...all.map((x) => x.peakRss)),
      runs: all.length,
    };
  });
  return {
    size: runs[0].size,
    rows,
    baseRss: Math.min(...runs.map((r) => r.baseRss)),
    peakRss: Math.max(...runs.map((r) => r.peakRss)),
    verified: runs.every((r) => r.verified),
  };
}

async function runScaleOps(job: {
  dm: DeviceMemory;
  size: number;
  settings: ScaleSettings;
  dir: string;
  onRow?: (row: ScaleRow) => void;
}): Promise<ScaleSizeResult> {
  const { dm, size, settings, dir, onRow } = job;
  const { pageSize } = settings;
  const make = SCALE_POLICIES[settings.policy];
  if (!make) throw new HmmlabError('EINVAL', `bench scale: unknown policy '${settings.policy}'`);
  const pages = size / pageSize;
  const fs = await HmmFs.mount({
    dir,
    pageSize,
    hostPages: settings.hostPages,
    maxFileSize: Math.max(size, GiB),
    policy: make(dm),
  });
  const rows: ScaleRow[] = [];
  try {
    const f = await fs.open('scale.dat', { create: true });
    const baseRss = currentRss();
    const timed = async (op: ScaleOp, fn: () => Promise<number | undefined>) => {
      resetPeakRss();
      const before = fs.vmstat().nr_written ?? 0;
      const cpu0 = process.cpuUsage();
      const t0 = performance.now();
      const untimed = (await fn()) ?? 0; // ms of checking inside the op, not counted
      const ms = performance.now() - t0 - untimed;
      const cpu = process.cpuUsage(cpu0);
      const cpuMs = (cpu.user + cpu.system) / 1000 - untimed;
      const row: ScaleRow = {
        size,
        op,
        pages,
        ms,
        usPerPage: (ms * 1000) / pages,
        cpuMs,
        cpuUsPerPage: (cpuMs * 1000) / pages,
        sysMs: cpu.system / 1000,
        written: (fs.vmstat().nr_written ?? 0) - before,
        gbps: size / (ms / 1000) / 1e9,
        peakRss: peakRss(),
      };
      rows.push(row);
      onRow?.(row);
    };
    const buf = new Uint8Array(Math.min(CALL_BYTES, size));
    await timed('write', async () => {
      let untimed = 0;
      for (let off = 0; off < size; off += buf.length) {
        const n = Math.min(buf.length, size - off);
        const t = performance.now();
        fillPattern(buf.subarray(0, n), off, 1);
        untimed += performance.now() - t;
        await f.write(off, buf.subarray(0, n));
      }
      return untimed;
    });
    await timed('fsync', async () => {
      await f.fsync();
      return 0;
    });
    await timed('read', async () => {
      const check = new PatternCheck(1, 'read(2)');
      let untimed = 0;
      for (let off = 0; off < size; off += CALL_BYTES) {
        const got = await f.read(off, Math.min(CALL_BYTES, size - off));
        const t = performance.now();
        check.check(got, off);
        untimed += performance.now() - t;
      }
      return untimed;
    });
    await timed('devread', async () => {
      const check = new PatternCheck(1, 'devread');
      let untimed = 0;
      let next = 0;
      await f.deviceRead(0, size, (bytes, off) => {
        const t = performance.now();
        if (off !== next)
          throw new HmmlabError('EIO', `bench scale: devread bytes at ${off}, expected ${next}`);
        check.check(bytes, off);
        next += bytes.length;
        untimed += performance.now() - t;
      });
      if (next !== size)
        throw new HmmlabError('EIO', `bench scale: devread returned ${next} of ${size} bytes`);
      return untimed;
    });
    await timed('devwrite', async () => {
      await f.deviceWrite(0, size, 2);
      return 0;
    });
    await timed('fsync-device', async () => {
      await f.fsync();
      return 0;
    });
    await fs.unmount();
    await checkDisk(`${dir}/scale.dat`, size);
    return { size, rows, baseRss, peakRss: Math.max(...rows.map((r) => r.peakRss)), verified: true };
  } finally {
    await fs.unmount().catch(() => {}); // a no-op after the unmount above
    await rm(`${dir}/scale.dat`, { force: true });
  }
}

/** The backing file, read a chunk at a time, is the pattern of tag 2 over `size` bytes. */
async function checkDisk(path: string, size: number): Promise<void> {
  const fh = await open(path, 'r');
  try {
    const check = new PatternCheck(2, 'the disk after fsync');
    const buf = new Uint8Array(CALL_BYTES);
    let pos = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      check.check(buf.subarray(0, bytesRead), pos);
      pos += bytesRead;
    }
    if (pos !== size) throw new HmmlabError('EIO', `bench scale: the disk file is ${pos} bytes, not ${size}`);
  } finally {
    await fh.close();
  }
}

// ---- the report ----

/** The machine a run measured, for the JSON. */
/** The two measures of cost per page: wall time, and CPU time of the whole process. */
export type ScaleMetric = 'usPerPage' | 'cpuUsPerPage';

/**
 * Per op and measure: the largest size's cost per page over the smallest's (1 = flat), and the
 * widest spread over all sizes (max/min); peak memory likewise.
 */
export function costGrowth(results: readonly ScaleSizeResult[]): {
  last: Record<ScaleMetric, Record<string, number>>;
  spread: Record<ScaleMetric, Record<string, number>>;
  peakRss: { last: number; spread: number };
} {
  const last = { usPerPage: {}, cpuUsPerPage: {} } as Record<ScaleMetric, Record<string, number>>;
  const spread = { usPerPage: {}, cpuUsPerPage: {} } as Record<ScaleMetric, Record<string, number>>;
  for (const metric of ['usPerPage', 'cpuUsPerPage'] as const) {
    for (const op of SCALE_OPS) {
      const v = results.map((r) => r.rows.find((x) => x.op === op)?.[metric] ?? 0).filter((x) => x > 0);
      if (v.length < 2) continue;
      last[metric][op] = v[v.length - 1] / v[0];
      spread[metric][op] = Math.max(...v) / Math.min(...v);
    }
  }
  const rss = results.map((r) => r.peakRss);
  return {
    last,
    spread,
    peakRss: { last: rss[rss.length - 1] / rss[0], spread: Math.max(...rss) / Math.min(...rss) },
  };
}

const mib = (n: number) => (n / MiB).toFixed(0);

/** One table: a row per size, the cost per page of each op in `metric`, and the peak memory. */
export function formatScaleTable(
  results: readonly ScaleSizeResult[],
  metric: ScaleMetric = 'usPerPage',
): string {
  const unit = metric === 'usPerPage' ? 'us/pg' : 'cpu us/pg';
  const head = ['size', 'pages', ...SCALE_OPS.map((op) => `${op} ${unit}`), 'peak RSS MiB', 'base MiB'];
  const lines = results.map((r) => {
    const cell = (op: ScaleOp) => {
      const row = r.rows.find((x) => x.op === op);
      return row ? row[metric].toFixed(1) : '-';
    };
    const pages = r.rows[0]?.pages ?? 0;
    return [formatBytes(r.size), String(pages), ...SCALE_OPS.map(cell), mib(r.peakRss), mib(r.baseRss)];
  });
  return formatTable(head, lines, (i) => i === 0);
}

/** A vega-lite chart: wall and CPU time per page against file size (log-log), one line per op; peak RSS. */
export function scaleChartSpec(results: readonly ScaleSizeResult[], title: string): Record<string, unknown> {
  const sizes = results.map((r) => r.size / MiB);
  const x = {
    field: 'mib',
    type: 'quantitative',
    title: 'file size (MiB)',
    scale: { type: 'log', base: 2 },
    axis: { values: sizes },
  };
  const perPage = (metric: ScaleMetric, what: string) => ({
    title: what,
    width: 300,
    height: 220,
    data: {
      values: results.flatMap((r) =>
        r.rows.map((row) => ({ mib: r.size / MiB, op: row.op, us: row[metric] })),
      ),
    },
    mark: { type: 'line', point: true },
    encoding: {
      x,
      y: { field: 'us', type: 'quantitative', title: 'us per page', scale: { type: 'log' } },
      color: { field: 'op', type: 'nominal', title: null, sort: [...SCALE_OPS] },
    },
  });
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    background: 'white',
    hconcat: [
      perPage('usPerPage', 'wall time per page of the file (us)'),
      perPage('cpuUsPerPage', 'CPU time per page, all threads (us)'),
      {
        title: 'peak resident memory (MiB; dashed: before the first op)',
        width: 220,
        height: 220,
        data: {
          values: results.map((r) => ({ mib: r.size / MiB, rss: r.peakRss / MiB, base: r.baseRss / MiB })),
        },
        layer: [
          {
            mark: { type: 'line', point: true },
            encoding: { x, y: { field: 'rss', type: 'quantitative', title: 'MiB', scale: { zero: true } } },
          },
          {
            mark: { type: 'line', strokeDash: [4, 4], color: 'gray' },
            encoding: { x, y: { field: 'base', type: 'quantitative' } },
          },
        ],
      },
    ],
  };
}
