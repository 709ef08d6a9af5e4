/**
 * `hmmlab replay LOG`: apply an op log (/work/shared/oplog.md) to a file on the page cache.
 * With --json, stdout carries exactly oplog.md's output: one `{i, op, len, sha256}` object per
 * read-like op, then the `{op:"end", size, sha256}` line, last. Statistics go to stderr.
 */
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { HmmlabError } from '../errors.ts';
import { formatVmstat } from '../mm/vmstat.ts';
import { parseOplog } from '../oplog/parse.ts';
import type { ReplayRecord } from '../oplog/replay.ts';

interface ReplayCliOptions {
  json?: boolean;
  pageSize?: string;
  hostPages?: string;
  blocks?: string;
  dir?: string;
  stats?: boolean;
  check?: boolean;
}

const SUFFIX: Record<string, number> = { '': 1, k: 1024, m: 1024 * 1024 };

/** A positive integer option, with an optional K or M (binary) suffix: `65536`, `64K`, `2M`. */
export function parseCount(flag: string, value: string, min = 1): number {
  const m = /^(\d+)([kKmM]?)(i?[bB])?$/.exec(value.trim());
  const n = m ? Number(m[1]) * SUFFIX[m[2].toLowerCase()] : Number.NaN;
  if (!Number.isSafeInteger(n) || n < min) {
    throw new HmmlabError(
      'EINVAL',
      `${flag} must be an integer >= ${min} (K and M suffixes allowed), got '${value}'`,
    );
  }
  return n;
}

export function parsePageSize(value: string): number {
  const n = parseCount('--page-size', value);
  if (n < 4096 || n > 2 * 1024 * 1024 || (n & (n - 1)) !== 0) {
    throw new HmmlabError(
      'EINVAL',
      `--page-size must be a power of two from 4096 to 2097152 (2M), got '${value}'`,
    );
  }
  return n;
}

async function readLog(path: string): Promise<string> {
  try {
    if (path === '-') {
      const chunks: Buffer[] = [];
      for await (const c of process.stdin) chunks.push(c as Buffer);
      return Buffer.concat(chunks).toString('utf8');
    }
    return await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'ENOENT' : 'EIO';
    throw new HmmlabError(code, `cannot read op log '${path}': ${(e as Error).message}`);
  }
}

function humanLine(r: ReplayRecord): string {
  if (r.op === 'end') return `end         size ${r.size}  sha256 ${r.sha256}`;
  return `line ${String(r.i + 1).padEnd(6)} ${r.op.padEnd(8)} ${String(r.len).padStart(8)} bytes  sha256 ${r.sha256}`;
}

export function registerReplay(program: Command): void {
  program
    .command('replay')
    .description(
      'apply an op log (JSON Lines, one op a line) to a file on the page cache and report every read',
    )
    .argument('<log>', "the op log, or '-' for stdin")
    .option('--json', "one JSON object a line: each read, then the end line (oplog.md's output)")
    .option('--page-size <bytes>', 'page size, a power of two from 4K to 2M', '4096')
    .option('--host-pages <n>', 'host page budget: reclaim runs past it', '1024')
    .option('--blocks <n>', 'block budget of the filesystem: writes past it fail with ENOSPC')
    .option('--dir <dir>', 'directory for the backing file (default: a temporary one, removed afterwards)')
    .option('--stats', 'print the vmstat counters to stderr at the end')
    .option(
      '--check',
      'compare every read, and the disk after each fsync and remount, with the reference model',
    )
    .action(async (logPath: string, opts: ReplayCliOptions) => {
      const pageSize = parsePageSize(opts.pageSize ?? '4096');
      const hostPages = parseCount('--host-pages', opts.hostPages ?? '1024');
      const blocks = opts.blocks === undefined ? undefined : parseCount('--blocks', opts.blocks, 0);
      // The whole log is parsed (and its EOF rules checked) before anything touches the disk.
      const log = parseOplog(await readLog(logPath));
      const out = (s: string) => process.stdout.write(`${s}\n`);
      // Loaded here so that other commands do not load the page cache.
      const { replayOplog } = await import('../oplog/replay.ts');
      const result = await replayOplog(log.ops, {
        pageSize,
        hostPages,
        blocks,
        dir: opts.dir,
        check: opts.check,
        lines: log.lines,
        onRecord: (r) => out(opts.json ? JSON.stringify(r) : humanLine(r)),
      });
      if (!opts.json) {
        const checked = opts.check
          ? `; every read and ${result.diskChecks} disk images match the reference model`
          : '';
        out(
          `replayed ${result.ops} ops (${result.reads.length} reads) in ${result.elapsedMs.toFixed(0)} ms, ` +
            `page size ${pageSize}, ${hostPages} host pages${checked}`,
        );
      }
      if (opts.stats) process.stderr.write(`${formatVmstat(result.vmstat)}\n`);
    });
}
