/**
 * `hmmlab generate`: write a seeded op log (docs/oplog.md) without running it, the workload that
 * `hmmlab stress` would run with the same seed and switches: the same seed, ops, page size, file
 * size and op mix always give the same log. To stdout, or to --out FILE.
 */
import { writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { parseCount, parsePageSize } from '../bench/units.ts';
import { generateOplog } from '../oplog/generate.ts';
import { serializeOplog } from '../oplog/schema.ts';
import { checkOutputFile } from './paths.ts';
import { addOpMixOptions, DEFAULT_FILE_PAGES, opMixOf, parseMaxFileSize, parseSeed } from './workload.ts';

interface GenerateCliOptions {
  seed?: string;
  ops?: string;
  pageSize?: string;
  maxFileSize?: string;
  device?: boolean;
  out?: string;
  [name: string]: unknown;
}

export const GENERATE_DEFAULT_OPS = 1000;

export function registerGenerate(program: Command): void {
  const cmd = program
    .command('generate')
    .description(
      'write a seeded op log (JSON Lines, docs/oplog.md) without running it: the workload `hmmlab stress` ' +
        'runs with the same seed and switches',
    )
    .option('--seed <n>', 'seed, 0..2^31-1 (default: random, printed on stderr)')
    .option('--ops <n>', `ops in the log (default ${GENERATE_DEFAULT_OPS})`)
    .option('--page-size <bytes>', 'the page size that page-aligned offsets use (default 4096)')
    .option(
      '--max-file-size <bytes>',
      `writes, truncates and direct I/O stay below it (default ${DEFAULT_FILE_PAGES} pages)`,
    )
    .option('--no-device', 'generate no device ops (devread, devwrite)');
  addOpMixOptions(cmd)
    .option('-o, --out <file>', 'write the log to FILE (replaced if it exists) instead of stdout')
    .addHelpText(
      'after',
      '\nExample:\n  hmmlab generate --seed 7 --ops 200 --no-dio --out w.jsonl && hmmlab replay w.jsonl --check',
    )
    .action(async (opts: GenerateCliOptions) => {
      const pageSize = parsePageSize(opts.pageSize, 4096);
      const ops = parseCount('--ops', opts.ops, GENERATE_DEFAULT_OPS, 0);
      const maxFileSize = parseMaxFileSize(opts.maxFileSize, pageSize);
      const seed = parseSeed(opts.seed);
      if (opts.out !== undefined) checkOutputFile('--out', opts.out);
      if (opts.seed === undefined)
        process.stderr.write(`generate: seed ${seed} (--seed ${seed} repeats it)\n`);
      const { weights } = opMixOf(opts);
      const log = generateOplog({ seed, ops, pageSize, maxFileSize, device: opts.device !== false, weights });
      const text = serializeOplog(log);
      if (opts.out === undefined) process.stdout.write(text);
      else await writeFile(opts.out, text);
    });
}
