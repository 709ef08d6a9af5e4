/**
 * `hmmlab demo` (what `npm start` runs): a tour of the lab as a list of chapters, each a short
 * run on the real device with its output. Later parts of the lab append chapters to CHAPTERS
 * (the page cache, device faults and replay, the mirror and migrate policies...).
 */
import type { Command } from 'commander';
import { formatCopyTable } from '../bench/copy.ts';
import { HmmlabError } from '../errors.ts';
import { GpuDevice } from '../gpu/device.ts';
import { runCopyBench } from './bench.ts';
import { adapterReport, formatAdapterReport, gpuOptionsOf } from './info.ts';

export interface DemoContext {
  /** The device every chapter shares (an adapter gives one device; webgpu-notes.md). */
  gpu: GpuDevice;
  /** Print text (a chapter's output goes to stdout). */
  print: (text: string) => void;
}

export interface Chapter {
  /** Short name, also what `hmmlab demo --chapter` selects by. */
  name: string;
  title: string;
  run: (ctx: DemoContext) => Promise<void>;
}

export const adapterChapter: Chapter = {
  name: 'adapter',
  title: 'The device: a real WebGPU adapter',
  run: async ({ gpu, print }) => {
    print(formatAdapterReport(adapterReport(gpu)));
  },
};

export const copyChapter: Chapter = {
  name: 'copy',
  title: 'Copy bandwidth: the ceiling for every page copy (hmmlab bench copy)',
  run: async ({ gpu, print }) => {
    const rows = await runCopyBench(gpu, { sizes: [64 << 10, 1 << 20, 16 << 20], iters: 3 });
    print(formatCopyTable(rows));
  },
};

/** The demo, in order. Append new chapters here. */
export const CHAPTERS: Chapter[] = [adapterChapter, copyChapter];

export async function runDemo(ctx: DemoContext, chapters: readonly Chapter[] = CHAPTERS): Promise<void> {
  for (const [i, chapter] of chapters.entries()) {
    ctx.print(`\n== ${i + 1}. ${chapter.title}\n\n`);
    await chapter.run(ctx);
  }
}

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('a short tour of the lab on the real device (what `npm start` runs)')
    .option(
      '--chapter <names>',
      `comma-separated chapters to run (${CHAPTERS.map((c) => c.name).join(', ')})`,
    )
    .action(async (opts: { chapter?: string }, cmd: Command) => {
      const chapters = opts.chapter === undefined ? CHAPTERS : selectChapters(opts.chapter);
      const gpu = await GpuDevice.open(gpuOptionsOf(cmd));
      try {
        process.stdout.write(
          'hmmlab: real GPU memory as un-addressable device memory for page-cache pages\n',
        );
        await runDemo({ gpu, print: (text) => process.stdout.write(text) }, chapters);
      } finally {
        gpu.destroy();
      }
    });
}

function selectChapters(names: string): Chapter[] {
  return names.split(',').map((name) => {
    const chapter = CHAPTERS.find((c) => c.name === name.trim());
    if (!chapter) {
      throw new HmmlabError(
        'EINVAL',
        `unknown demo chapter "${name}": expected one of ${CHAPTERS.map((c) => c.name).join(', ')}`,
      );
    }
    return chapter;
  });
}
