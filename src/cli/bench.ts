/**
 * `hmmlab bench copy`: raw WebGPU copy bandwidth per path and size (src/bench/copy.ts).
 * `hmmlab bench faults`: fault-driven device access against a prefetch and the floor (src/bench/faults.ts).
 * A progress bar on stderr while they run; then a table, or with --json only a JSON array on stdout.
 */
import { writeFileSync } from 'node:fs';
import { freemem } from 'node:os';
import { SingleBar } from 'cli-progress';
import type { Command } from 'commander';
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
import {
  type BenchFaultsFlags,
  benchFaults,
  choosePages,
  DEFAULT_FAULT_BATCHES,
  type FaultBenchArgs,
  type FaultBenchRow,
  faultChartSpec,
  faultPagesCap,
  formatFaultTable,
  parseFaultBenchArgs,
} from '../bench/faults.ts';
import { formatBytes, parseCount, parseSizeList } from '../bench/units.ts';
import { HmmlabError } from '../errors.ts';
import type { GpuDevice } from '../gpu/device.ts';
import { adapterName, withGpu } from './info.ts';

export interface BenchCopyOptions {
  json?: boolean;
  sizes?: string;
  iters?: string;
  paths?: string;
  svg?: string;
}

/** With --svg, write the chart there; say so unless stdout carries JSON. */
async function writeChart(opts: { svg?: string; json?: boolean }, spec: Record<string, unknown>) {
  if (!opts.svg) return;
  // Loaded here: vega takes half a second to load, which every other command would pay.
  const { renderSvg } = await import('../plot/svg.ts');
  writeFileSync(opts.svg, await renderSvg(spec));
  if (!opts.json) process.stdout.write(`chart written to ${opts.svg}\n`);
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

/** Run the copy benchmark on an open device, with a progress bar on stderr when it is a terminal. */
export async function runCopyBench(
  gpu: GpuDevice,
  opts: { sizes?: number[]; iters?: number; paths?: CopyPath[]; progress?: boolean },
): Promise<CopyBenchRow[]> {
  const cap = copySizeCap(gpu, freemem());
  const sizes = opts.sizes ?? defaultCopySizes(cap);
  checkCopySizes(sizes, cap, gpu);
  const bar =
    opts.progress !== false
      ? new SingleBar({
          stream: process.stderr,
          format: 'bench copy [{bar}] {value}/{total} {what}',
          hideCursor: true,
          clearOnComplete: true,
          barsize: 30,
        })
      : undefined;
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

/** Run the fault benchmark on an open device, with a progress bar on stderr when it is a terminal. */
export async function runFaultsBench(gpu: GpuDevice, args: FaultBenchArgs): Promise<FaultBenchRow[]> {
  const pages = choosePages(args.pages, args.pageSize, faultPagesCap(gpu, args.pageSize, freemem()));
  const bar = new SingleBar({
    stream: process.stderr,
    format: 'bench faults [{bar}] {value}/{total} {what}',
    hideCursor: true,
    clearOnComplete: true,
    barsize: 30,
  });
  bar.start(1, 0, { what: '' });
  try {
    return await benchFaults(gpu, {
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
        'warm-up, several samples of several copies, the median; data checked after each path',
    )
    .option('--json', 'print only a JSON array of rows {path, bytes, gbps, min, max, samples, copies}')
    .option(
      '--sizes <list>',
      'comma-separated sizes (4096, 64K, 16MiB...); default 4 KiB..256 MiB by powers of 4',
    )
    .option('--iters <n>', 'samples per path and size (default 5)')
    .option('--paths <list>', `comma-separated subset of ${COPY_PATHS.join(',')}`)
    .option('--svg <file>', 'also write a line chart of GB/s against size to FILE (SVG)')
    .action(async (opts: BenchCopyOptions, cmd: Command) => {
      // Parse everything before opening the device, so that bad input fails fast.
      const sizes = opts.sizes === undefined ? undefined : parseSizeList(opts.sizes);
      if (sizes) checkMinCopySizes(sizes);
      const iters = parseCount('--iters', opts.iters, 5);
      const paths = parsePaths(opts.paths);
      await withGpu(cmd, async (gpu) => {
        const rows = await runCopyBench(gpu, { sizes, iters, paths });
        if (opts.json) process.stdout.write(`${JSON.stringify(rows)}\n`);
        else {
          process.stdout.write(`${adapterName(gpu)} (${gpu.info.backend})\n`);
          process.stdout.write(formatCopyTable(rows));
        }
        await writeChart(opts, copyChartSpec(rows, `hmmlab copy bandwidth: ${adapterName(gpu)}`));
      });
    });
  bench
    .command('faults')
    .description(
      'what fault-driven device access costs: fault-driven devwrite and devread, the same after an ' +
        'explicit prefetch, the kernel alone on mapped pages, a fault batch-size sweep and a half-size ' +
        'device pool (thrashing); median of fresh-state samples, data checked after each',
    )
    .option('--json', 'print only a JSON array of rows on stdout')
    .option('--pages <n>', 'pages the kernels touch (default 4096, clamped to what the adapter allows)')
    .option('--page-size <n>', 'page size: 4096, 64K, ... 2M (default 4096)')
    .option('--batch <list>', `fault batch sizes of the sweep (default ${DEFAULT_FAULT_BATCHES.join(',')})`)
    .option(
      '--threads <n>',
      'kernels at once, each on its own slice of the pages and address space (default 1)',
    )
    .option('--iters <n>', 'timed samples per row, after one warm-up (default 3)')
    .option('--svg <file>', 'also write a chart (ms per mode, ms and batches per batch size) to FILE (SVG)')
    .action(async (opts: BenchFaultsFlags, cmd: Command) => {
      const args = parseFaultBenchArgs(opts); // before opening the device: bad input fails fast
      await withGpu(cmd, async (gpu) => {
        const rows = await runFaultsBench(gpu, args);
        if (opts.json) process.stdout.write(`${JSON.stringify(rows)}\n`);
        else {
          const r = rows[0];
          process.stdout.write(
            `${adapterName(gpu)} (${gpu.info.backend}): ${r.pages} pages of ` +
              `${formatBytes(r.pageSize)}, ${r.threads} kernel(s) at once, ${r.samples} samples a row\n`,
          );
          process.stdout.write(formatFaultTable(rows));
        }
        await writeChart(opts, faultChartSpec(rows, `hmmlab fault cost: ${adapterName(gpu)}`));
      });
    });
}
