/**
 * `hmmlab bench copy`: raw WebGPU copy bandwidth per path and size (src/bench/copy.ts), and with
 * --managed the page cache's own copies beside them (src/bench/managed.ts).
 * `hmmlab bench faults`: fault-driven device access under the real policies against a prefetch and
 * the floor (src/bench/faults.ts).
 * Each writes its report (JSON: machine, adapter, settings, rows, targets) and a chart (SVG) into
 * bench/results/ (--out DIR), and prints a table (or with --json only its rows on stdout).
 * `hmmlab bench scale`: cost per page and peak memory as the file grows, budgets fixed (src/bench/scale.ts;
 * each size in a child process of its own, `bench scale --one SIZE`, so that its peak memory is its own).
 * A progress bar on stderr while they run; then a table, or with --json only JSON on stdout.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { freemem, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { SingleBar } from 'cli-progress';
import { type Command, Option } from 'commander';
import {
  benchCopy,
  COPY_PATHS,
  type CopyBenchRow,
  type CopyPath,
  checkCopySizes,
  checkMinCopySizes,
  copyChartSpec,
  copySizeCap,
  defaultCopySizes,
  formatCopyTable,
} from '../bench/copy.ts';
import type { BenchFaultsFlags, FaultBenchArgs, FaultBenchReport } from '../bench/faults.ts';
import { machineInfo } from '../bench/machine.ts';
import type { ManagedRow } from '../bench/managed.ts';
import type { ScaleRow, ScaleSettings, ScaleSizeResult } from '../bench/scale.ts';
import { formatBytes, parseCount, parsePageSize, parseSize, parseSizeList } from '../bench/units.ts';
import { HmmlabError } from '../errors.ts';
import type { GpuDevice } from '../gpu/device.ts';
import type { DevicePolicyName } from '../policy/registry.ts';
import { adapterName, adapterReport, gpuOptionsOf, withGpu } from './info.ts';

export interface BenchCopyOptions {
  json?: boolean;
  sizes?: string;
  iters?: string;
  paths?: string;
  svg?: string;
  managed?: boolean;
  pageSizes?: string;
  policy?: string;
  out?: string;
}

/** A bar on stderr for a benchmark's samples. */
function progressBar(name: string): SingleBar {
  return new SingleBar({
    stream: process.stderr,
    format: `bench ${name} [{bar}] {value}/{total} {what}`,
    hideCursor: true,
    clearOnComplete: true,
    barsize: 30,
  });
}

/** Write a benchmark's report and chart into `outDir`; returns their paths. */
async function writeReport(
  outDir: string,
  name: string,
  adapter: string,
  report: Record<string, unknown>,
  chart: Record<string, unknown>,
  svgPath?: string,
): Promise<{ json: string; svg: string }> {
  mkdirSync(outDir, { recursive: true });
  const base = join(outDir, `${name}-${slug(adapter)}`);
  writeFileSync(`${base}.json`, `${JSON.stringify(report, null, 2)}\n`);
  const svg = svgPath ?? `${base}.svg`;
  const { renderSvg } = await import('../plot/svg.ts');
  writeFileSync(svg, await renderSvg(chart));
  return { json: `${base}.json`, svg };
}

/** The device policies, by name: mirror and migrate (policy/registry.ts's list, without loading it here). */
const DEVICE_POLICY_NAMES: readonly DevicePolicyName[] = ['mirror', 'migrate'];

function parseDevicePolicies(text: string | undefined): DevicePolicyName[] {
  if (text === undefined) return [...DEVICE_POLICY_NAMES];
  return text.split(',').map((p) => {
    const name = p.trim();
    if (!(DEVICE_POLICY_NAMES as readonly string[]).includes(name)) {
      throw new HmmlabError(
        'EINVAL',
        `bad --policy "${text}": "${name}" is not a policy with a device (${DEVICE_POLICY_NAMES.join(', ')})`,
      );
    }
    return name as DevicePolicyName;
  });
}

function parsePaths(text: string | undefined): CopyPath[] {
  if (text === undefined) return [...COPY_PATHS];
  return text.split(',').map((p) => {
    const path = p.trim() as CopyPath;
    if (!COPY_PATHS.includes(path)) {
      throw new HmmlabError('EINVAL', `unknown copy path "${p}": expected one of ${COPY_PATHS.join(', ')}`);
    }
    return path;
  });
}

/** Run the copy benchmark on an open device, with a progress bar on stderr. */
export async function runCopyBench(
  gpu: GpuDevice,
  opts: { sizes?: number[]; iters?: number; paths?: CopyPath[]; progress?: boolean },
): Promise<CopyBenchRow[]> {
  const cap = copySizeCap(gpu, freemem());
  const sizes = opts.sizes ?? defaultCopySizes(cap);
  checkCopySizes(sizes, cap, gpu);
  const bar = opts.progress !== false ? progressBar('copy') : undefined;
  const paths = opts.paths ?? [...COPY_PATHS];
  bar?.start(sizes.length * paths.length, 0, { what: '' });
  try {
    return await benchCopy(gpu, {
      sizes,
      iters: opts.iters,
      paths,
      onProgress: (done, _total, path, bytes) =>
        bar?.update(done, { what: path ? `${path} ${formatBytes(bytes)}` : '' }),
    });
  } finally {
    bar?.stop();
  }
}

/** The managed rows beside `raw`, with a progress bar on stderr. */
async function runManagedBench(
  gpu: GpuDevice,
  raw: CopyBenchRow[],
  opts: { sizes: number[]; pageSizes: number[]; policies: DevicePolicyName[]; iters?: number },
): Promise<ManagedRow[]> {
  const { benchManaged } = await import('../bench/managed.ts');
  const bar = progressBar('copy --managed');
  bar.start(1, 0, { what: '' });
  try {
    return await benchManaged(gpu, raw, {
      sizes: opts.sizes,
      pageSizes: opts.pageSizes,
      policies: opts.policies,
      iters: opts.iters,
      onProgress: (done, total, what) => {
        bar.setTotal(total);
        bar.update(done, { what });
      },
    });
  } finally {
    bar.stop();
  }
}

/** Run the fault benchmark on an open device, with a progress bar on stderr. */
export async function runFaultsBench(gpu: GpuDevice, args: FaultBenchArgs): Promise<FaultBenchReport> {
  const { benchFaultsReport, choosePages, faultPagesCap } = await import('../bench/faults.ts');
  const pages = choosePages(args.pages, args.pageSize, faultPagesCap(gpu, args.pageSize, freemem()));
  const bar = progressBar('faults');
  bar.start(1, 0, { what: '' });
  try {
    return await benchFaultsReport(gpu, {
      ...args,
      pages,
      onProgress: (done, total, what) => {
        bar.setTotal(total);
        bar.update(done, { what });
      },
    });
  } finally {
    bar.stop();
  }
}

export function registerBench(program: Command): void {
  const bench = program.command('bench').description('benchmarks of the lab’s building blocks');
  bench
    .command('copy')
    .description(
      `copy bandwidth per path (${COPY_PATHS.join(', ')}) and size, as nvbandwidth measures it: ` +
        'warm-up, several samples of several copies, the median; data checked after each path. ' +
        "With --managed, the page cache's own copies beside them: managed-h2d (a prefetch of cached file " +
        'pages to the device) and managed-d2h (read(2) pulling device-written pages back), per page size and policy',
    )
    .option(
      '--json',
      'print only a JSON array of rows {path, bytes, gbps, min, max, samples, copies} (managed rows add policy, pageSize, ratio)',
    )
    .option(
      '--sizes <list>',
      'comma-separated sizes (4096, 64K, 16MiB...); default 4 KiB..256 MiB by powers of 4 (the managed rows: those of 1 MiB and more)',
    )
    .option('--iters <n>', 'samples per path and size (default 5; the managed rows 3)')
    .option('--paths <list>', `comma-separated subset of ${COPY_PATHS.join(',')}`)
    .option('--managed', 'also measure the managed copies (managed-h2d, managed-d2h) under each policy')
    .option('--page-sizes <list>', 'the managed rows: page sizes (default 4K,64K,2M)')
    .option('--policy <list>', `the managed rows: policies (default ${DEVICE_POLICY_NAMES.join(',')})`)
    .option('--out <dir>', 'where the JSON report and the chart go (default bench/results/)')
    .option('--svg <file>', 'the chart (default: next to the JSON report, same name)')
    .action(async (opts: BenchCopyOptions, cmd: Command) => {
      // Parse everything before opening the device, so that bad input fails fast.
      const sizes = opts.sizes === undefined ? undefined : parseSizeList(opts.sizes);
      if (sizes) checkMinCopySizes(sizes);
      const iters = parseCount('--iters', opts.iters, 5);
      let paths = parsePaths(opts.paths);
      const pageSizes =
        opts.pageSizes === undefined
          ? [4096, 65536, 2 << 20]
          : opts.pageSizes.split(',').map((p) => parsePageSize(p.trim(), 4096));
      const policies = parseDevicePolicies(opts.policy);
      if (opts.managed && opts.paths === undefined) {
        // The ratios' base: the raw paths of each direction (the others are no one's ceiling).
        paths = ['h2d-writeBuffer', 'h2d-staging', 'd2h-mapread', 'd2d-copy', 'host-memcpy'];
      }
      const { managedSizes } = await import('../bench/managed.ts');
      if (opts.managed && sizes) managedSizes(sizes, pageSizes); // bad sizes fail before the device opens
      await withGpu(cmd, async (gpu) => {
        const rows = await runCopyBench(gpu, { sizes, iters, paths });
        const rawSizes = [...new Set(rows.map((r) => r.bytes))];
        const managed = opts.managed
          ? await runManagedBench(gpu, rows, {
              sizes: managedSizes(rawSizes, pageSizes),
              pageSizes,
              policies,
              iters: opts.iters === undefined ? undefined : iters,
            })
          : [];
        const name = adapterName(gpu);
        const { managedTargets } = await import('../bench/managed.ts');
        const targets = managedTargets(managed);
        const report = {
          bench: 'copy',
          date: new Date().toISOString(),
          machine: machineInfo(),
          adapter: adapterReport(gpu),
          settings: { sizes: rawSizes, iters, paths, managed: opts.managed === true, pageSizes, policies },
          rows,
          managed,
          targets,
        };
        const chart = copyChartSpec(rows, `hmmlab copy bandwidth: ${name}`, managed);
        const files = await writeReport(opts.out ?? RESULTS_DIR, 'copy', name, report, chart, opts.svg);
        if (opts.json) {
          process.stdout.write(`${JSON.stringify([...rows, ...managed])}\n`);
          return;
        }
        process.stdout.write(`${name} (${gpu.info.backend})\n`);
        process.stdout.write(formatCopyTable(rows));
        if (managed.length) {
          const { formatManagedTable } = await import('../bench/managed.ts');
          const { formatTargets } = await import('../bench/faults.ts');
          process.stdout.write(formatManagedTable(managed));
          process.stdout.write(formatTargets(targets));
        }
        process.stdout.write(`report written to ${files.json}, chart to ${files.svg}\n`);
      });
    });
  bench
    .command('faults')
    .description(
      'what device faults cost under the real policies (mirror, migrate): fault-driven devwrite and devread, ' +
        'the same after an explicit prefetch, the kernel alone on mapped pages, a fault batch-size sweep, the ' +
        'four replay policies, a half-size device pool (thrashing) and 64 MiB of pages; median of fresh-mount ' +
        'samples, data checked after each',
    )
    .option('--json', 'print only a JSON array of rows on stdout')
    .option('--pages <n>', 'pages the kernels touch (default 4096, clamped to what the adapter allows)')
    .option('--page-size <n>', 'page size: 4096, 64K, ... 2M (default 4096)')
    .option('--batch <list>', 'fault batch sizes of the sweep (default 1,16,64,256,1024)')
    .option('--policy <list>', `the policies (default ${DEVICE_POLICY_NAMES.join(',')})`)
    .option('--large <bytes>', 'bytes of the large first-touch rows (default 64M; 0 leaves them out)')
    .option(
      '--threads <n>',
      'kernels at once, each on its own slice of the pages (its own file and mount) (default 1)',
    )
    .option('--iters <n>', 'timed samples per row, after one warm-up (default 3)')
    .option('--out <dir>', 'where the JSON report and the chart go (default bench/results/)')
    .option('--svg <file>', 'the chart (default: next to the JSON report, same name)')
    .action(async (opts: BenchFaultsFlags, cmd: Command) => {
      const faults = await import('../bench/faults.ts');
      const { faultChartSpec, formatFaultTable, formatTargets } = faults;
      const args = faults.parseFaultBenchArgs(opts); // before opening the device: bad input fails fast
      await withGpu(cmd, async (gpu) => {
        const result = await runFaultsBench(gpu, args);
        const { rows } = result;
        const name = adapterName(gpu);
        const r = rows[0];
        const report = {
          bench: 'faults',
          date: new Date().toISOString(),
          machine: machineInfo(),
          adapter: adapterReport(gpu),
          settings: {
            ...args,
            pages: r.pages,
            subgroups: gpu.has('subgroups'),
            timestamps: gpu.has('timestamp-query'),
          },
          ...result,
        };
        const files = await writeReport(
          opts.out ?? RESULTS_DIR,
          'faults',
          name,
          report,
          faultChartSpec(rows, `hmmlab fault cost: ${name}`),
          opts.svg,
        );
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(rows)}\n`);
          return;
        }
        process.stdout.write(
          `${name} (${gpu.info.backend}): ${r.pages} pages of ${formatBytes(r.pageSize)}, ` +
            `${r.threads} kernel(s) at once, ${r.samples} samples a row; raw copy of a page ` +
            `${result.rawPageCopy.usAmortized.toFixed(2)} us within a ${formatBytes(result.rawPageCopy.batchBytes)} copy ` +
            `(${result.rawPageCopy.usAlone.toFixed(1)} us alone)\n`,
        );
        process.stdout.write(formatFaultTable(rows));
        process.stdout.write(formatTargets(result.targets));
        process.stdout.write(`report written to ${files.json}, chart to ${files.svg}\n`);
      });
    });
  registerBenchScale(bench);
}

// ---- bench scale ----

interface BenchScaleFlags {
  json?: boolean;
  sizes?: string;
  pageSize?: string;
  hostPages?: string;
  devicePages?: string;
  policy?: string;
  chunk?: string;
  dir?: string;
  out?: string;
  svg?: string;
  one?: string;
}

const BIN = fileURLToPath(new URL('../../bin/hmmlab.mjs', import.meta.url));
const RESULTS_DIR = fileURLToPath(new URL('../../bench/results/', import.meta.url));

async function scaleSettingsOf(o: BenchScaleFlags): Promise<ScaleSettings> {
  const { DEFAULT_SCALE_SETTINGS, SCALE_POLICIES } = await import('../bench/scale.ts');
  const policy = o.policy ?? DEFAULT_SCALE_SETTINGS.policy;
  if (!SCALE_POLICIES[policy]) {
    throw new HmmlabError(
      'EINVAL',
      `bad --policy "${policy}": expected one of ${Object.keys(SCALE_POLICIES).join(', ')} (a policy with a device)`,
    );
  }
  return {
    pageSize: parsePageSize(o.pageSize, DEFAULT_SCALE_SETTINGS.pageSize),
    hostPages: parseCount('--host-pages', o.hostPages, DEFAULT_SCALE_SETTINGS.hostPages),
    devicePages: parseCount('--device-pages', o.devicePages, DEFAULT_SCALE_SETTINGS.devicePages),
    policy,
    chunkBytes: o.chunk === undefined ? undefined : parseSize(o.chunk),
  };
}

/** The flags a child is run with: the parent's settings, spelled out. */
function settingsArgs(s: ScaleSettings): string[] {
  const args = ['--page-size', String(s.pageSize), '--host-pages', String(s.hostPages)];
  args.push('--device-pages', String(s.devicePages), '--policy', s.policy);
  if (s.chunkBytes !== undefined) args.push('--chunk', String(s.chunkBytes));
  return args;
}

/** One size in a child process: its rows as they come (onRow), its result at the end. */
function runScaleChild(
  cmd: Command,
  size: number,
  settings: ScaleSettings,
  dir: string,
  onRow: (row: ScaleRow) => void,
): Promise<ScaleSizeResult> {
  const { adapter, backend } = gpuOptionsOf(cmd);
  const global = [...(adapter ? ['--adapter', adapter] : []), ...(backend ? ['--backend', backend] : [])];
  const args = [
    BIN,
    ...global,
    'bench',
    'scale',
    '--one',
    String(size),
    '--dir',
    dir,
    ...settingsArgs(settings),
  ];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  let result: ScaleSizeResult | undefined;
  const lines = createInterface({ input: child.stdout });
  lines.on('line', (line) => {
    const msg = JSON.parse(line) as { row?: ScaleRow; result?: ScaleSizeResult };
    if (msg.row) onRow(msg.row);
    if (msg.result) result = msg.result;
  });
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => {
      if (result && code === 0) return resolve(result);
      // The child's own one-line error, without Dawn's and Mesa's noise.
      const why = stderr
        .split('\n')
        .filter((l) => l.startsWith('hmmlab: ') || /Error/.test(l))
        .join('; ');
      reject(
        new HmmlabError(
          'EIO',
          `bench scale: the run of ${formatBytes(size)} failed (exit ${code}): ${why || 'no message'}`,
        ),
      );
    });
  });
}

/** A file name for an adapter: "llvmpipe-mesa-25-0-7" and the like. */
function slug(text: string): string {
  return (
    text
      .toLowerCase()
      .replace(/[^a-z0-9]+/g, '-')
      .replace(/^-|-$/g, '')
      .slice(0, 48) || 'adapter'
  );
}

export function registerBenchScale(bench: Command): void {
  bench
    .command('scale')
    .description(
      'cost per page and peak resident memory as the file grows with the budgets fixed: write(2), fsync, ' +
        'read(2), devread, devwrite, fsync over files of 16 MiB to 4 GiB on a software adapter, to 64 GiB on ' +
        'a GPU (clamped to the free disk and the device), each size in a process of its own',
    )
    .option('--json', 'print only the JSON report on stdout')
    .option('--sizes <list>', 'comma-separated file sizes (16M, 1G, ...), whole pages')
    .option('--page-size <bytes>', 'page size (default 4096)')
    .option('--host-pages <n>', 'host page budget (default 1024: 4 MiB at 4 KiB pages)')
    .option('--device-pages <n>', 'device frames (default 1024)')
    .option('--policy <name>', "the coherence policy (default 'mirror')")
    .option(
      '--chunk <bytes>',
      'work one kernel launch covers at most (default 16M; 4M on a software adapter)',
    )
    .option('--dir <dir>', 'where the files go (default: the temporary directory)')
    .option('--out <dir>', 'where the JSON and SVG reports go (default bench/results/)')
    .option('--svg <file>', 'the chart (default: next to the JSON, same name)')
    .addOption(
      new Option(
        '--one <bytes>',
        'run one size here and print JSON lines (how the parent runs each size)',
      ).hideHelp(),
    )
    .action(async (opts: BenchScaleFlags, cmd: Command) => {
      const settings = await scaleSettingsOf(opts);
      const scale = await import('../bench/scale.ts');
      if (opts.one !== undefined) {
        const size = parseSize(opts.one);
        const dir = mkdtempSync(join(opts.dir ?? tmpdir(), 'hmmlab-scale-'));
        try {
          await withGpu(cmd, async (gpu) => {
            const result = await scale.runScaleSize(gpu, size, settings, dir, (row) =>
              process.stdout.write(`${JSON.stringify({ row })}\n`),
            );
            process.stdout.write(`${JSON.stringify({ result })}\n`);
          });
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
        return;
      }
      const explicit = opts.sizes === undefined ? undefined : parseSizeList(opts.sizes);
      const dir = opts.dir ?? tmpdir();
      const disk = statfsSync(dir);
      const adapter = await withGpu(cmd, async (gpu) => {
        const cap = scale.scaleSizeCap(gpu, settings.pageSize, disk.bavail * disk.bsize);
        if (explicit) scale.checkScaleSizes(explicit, cap, settings.pageSize);
        return {
          name: adapterName(gpu),
          report: adapterReport(gpu),
          sizes: explicit ?? scale.defaultScaleSizes(cap, gpu.info.software, settings.pageSize),
          cap,
        };
      });
      const { sizes } = adapter;
      const bar = progressBar('scale');
      bar.start(sizes.length * scale.SCALE_OPS.length, 0, { what: '' });
      const results: ScaleSizeResult[] = [];
      let done = 0;
      try {
        for (const size of sizes) {
          bar.update(done, { what: `${formatBytes(size)} write` });
          results.push(
            await runScaleChild(cmd, size, settings, dir, (row) => {
              const next = scale.SCALE_OPS[scale.SCALE_OPS.indexOf(row.op) + 1];
              bar.update(++done, { what: next ? `${formatBytes(size)} ${next}` : '' });
            }),
          );
        }
      } finally {
        bar.stop();
      }
      const report = {
        bench: 'scale',
        date: new Date().toISOString(),
        machine: machineInfo(),
        adapter: adapter.report,
        settings: { ...settings, sizes, sizeCap: adapter.cap },
        ops: scale.SCALE_OP_TEXT,
        results,
        growth: scale.costGrowth(results),
      };
      const written = await writeReport(
        opts.out ?? RESULTS_DIR,
        'scale',
        adapter.name,
        report,
        scale.scaleChartSpec(results, `hmmlab bench scale: ${adapter.name}`),
        opts.svg,
      );
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(report)}\n`);
        return;
      }
      const s = settings;
      process.stdout.write(
        `${adapter.name} (${adapter.report.backend}): policy ${s.policy}, page size ${formatBytes(s.pageSize)}, ` +
          `${s.hostPages} host pages (${formatBytes(s.hostPages * s.pageSize)}), ${s.devicePages} device frames ` +
          `(${formatBytes(s.devicePages * s.pageSize)}); us per page, peak resident memory per size\n`,
      );
      process.stdout.write(scale.formatScaleTable(results, 'usPerPage'));
      process.stdout.write(scale.formatScaleTable(results, 'cpuUsPerPage'));
      if (results.length > 1) {
        const g = report.growth;
        const list = (m: Record<string, number>) =>
          Object.entries(m)
            .map(([k, v]) => `${k} ${v.toFixed(2)}x`)
            .join(', ');
        process.stdout.write(
          `cost per page at ${formatBytes(sizes[sizes.length - 1])} over ${formatBytes(sizes[0])} ` +
            `(${sizes[sizes.length - 1] / sizes[0]}x the file): wall ${list(g.last.usPerPage)}; ` +
            `cpu ${list(g.last.cpuUsPerPage)}; peak memory ${g.peakRss.last.toFixed(2)}x\n`,
        );
      }
      process.stdout.write(`report written to ${written.json}, chart to ${written.svg}\n`);
    });
}
