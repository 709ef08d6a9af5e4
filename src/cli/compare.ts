/**
 * `hmmlab compare [--workload NAME|all] [--json] [--svg FILE]`: the same workloads under mirror,
 * migrate and explicit (src/bench/compare.ts), a table (or with --json a JSON array, one object per
 * workload and policy) and a vega-lite chart. A progress line per run on stderr.
 */
import { writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import { parseCount, parsePageSize } from '../bench/units.ts';
import { HmmlabError } from '../errors.ts';
import type { Chapter } from './demo.ts';
import { adapterName, withGpu } from './info.ts';

interface CompareCliOptions {
  workload?: string;
  json?: boolean;
  svg?: string;
  pages?: string;
  kernels?: string;
  pageSize?: string;
}

export function registerCompare(program: Command): void {
  program
    .command('compare')
    .description(
      "the same workloads under Kara's mirror, Glisse's migrate and explicit copies (no coherence): " +
        'host pages held, device frames, bytes copied each way, faults, batches, wall time',
    )
    .option(
      '--workload <name>',
      'glisse-dataset, glisse-dataset-pressure, pingpong, read-mostly, stream-write, or all',
      'all',
    )
    .option('--json', 'print only a JSON array, one object per workload and policy')
    .option('--svg <file>', 'also write a chart (host pages held, MiB copied) to FILE (SVG)')
    .option('--pages <n>', 'pages of each workload file (D)', '256')
    .option('--kernels <n>', 'kernels (rounds) of each workload (K)', '16')
    .option('--page-size <bytes>', 'page size, a power of two from 4K to 2M', '4096')
    .action(async (opts: CompareCliOptions, cmd: Command) => {
      const { WORKLOADS, compare, compareChartSpec, formatCompareTable } = await import(
        '../bench/compare.ts'
      );
      const name = opts.workload ?? 'all';
      if (name !== 'all' && !(WORKLOADS as readonly string[]).includes(name)) {
        throw new HmmlabError(
          'EINVAL',
          `bad --workload "${name}": expected one of ${WORKLOADS.join(', ')}, or all`,
        );
      }
      const names = name === 'all' ? WORKLOADS : [name as (typeof WORKLOADS)[number]];
      const o = {
        pages: parseCount('--pages', opts.pages, 256),
        kernels: parseCount('--kernels', opts.kernels, 16),
        pageSize: parsePageSize(opts.pageSize, 4096),
      };
      await withGpu(cmd, async (gpu) => {
        const rows = await compare(gpu, names, o, (r) => {
          if (process.stderr.isTTY)
            process.stderr.write(`compare: ${r.workload} ${r.policy} (${r.seconds} s)\n`);
        });
        if (opts.json) process.stdout.write(`${JSON.stringify(rows)}\n`);
        else {
          process.stdout.write(
            `${adapterName(gpu)}: ${o.pages} pages of ${o.pageSize / 1024} KiB, ${o.kernels} kernels a workload\n`,
          );
          process.stdout.write(`${formatCompareTable(rows)}\n`);
        }
        if (opts.svg) {
          const { renderSvg } = await import('../plot/svg.ts');
          writeFileSync(
            opts.svg,
            await renderSvg(compareChartSpec(rows, `hmmlab compare (${adapterName(gpu)})`)),
          );
          if (!opts.json) process.stdout.write(`chart written to ${opts.svg}\n`);
        }
      });
    });
}

/** The demo's comparison chapter: Glisse's case and a read-mostly one, small, under all three. */
export const compareChapter: Chapter = {
  name: 'compare',
  title: "Kara's mirror, Glisse's migrate and explicit copies on the same workloads (hmmlab compare)",
  run: async ({ gpu, print }) => {
    const { compare, formatCompareTable } = await import('../bench/compare.ts');
    const o = { pages: 64, kernels: 8, pageSize: 4096 };
    const rows = await compare(gpu, ['glisse-dataset', 'read-mostly'], o);
    const at = (w: string, p: string) => rows.find((r) => r.workload === w && r.policy === p)!;
    print(
      `${o.pages} pages of 4 KiB, ${o.kernels} kernels each; every run's data checked against what it wrote: OK\n`,
    );
    print(`${formatCompareTable(rows)}\n`);
    const g = (p: string) => at('glisse-dataset', p).hostPagesAvg;
    const d2h = (p: string) => (at('read-mostly', p).bytesD2H / 1024).toFixed(0);
    print(
      `glisse-dataset: after the first kernel migrate holds none of the dataset on the host ` +
        `(${g('migrate')} pages on average, mirror ${g('mirror')}, explicit ${g('explicit')}: its buffer and the cache).\n` +
        `read-mostly: the price of moving the page: every CPU read(2) bounces, ${d2h('migrate')} KiB back from the device ` +
        `under migrate against ${d2h('mirror')} KiB under mirror, whose A stays readable.\n`,
    );
  },
};
