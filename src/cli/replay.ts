/**
 * `hmmlab replay LOG`: apply an op log (docs/oplog.md) to a file on the page cache.
 * With --json, stdout carries exactly docs/oplog.md's output: one `{i, op, len, sha256}` object per
 * read-like op, then the `{op:"end", size, sha256}` line, last. Statistics, the fault-batch
 * summary and the page-state snapshot go to stderr.
 *
 * The default policy is mirror (Kara's scheme on the GPU: device ops run); `--policy none` is the
 * host-only page cache, which refuses a log with device ops before anything runs. A log without
 * device ops runs host-only unless --policy mirror is given by name, so it needs no GPU.
 */
import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { peakRss } from '../bench/rss.ts';
import { parseCount, parseMaxFileSize, parsePageSize } from '../bench/units.ts';
import type { FaultBatchRecord } from '../device/stats.ts';
import { HmmlabError, isHmmlabError } from '../errors.ts';
import { FaultInjector, formatInjected, INJECT_POINTS, parseInjectSpecs } from '../inject/inject.ts';
import { DEFAULT_MAX_FILE_SIZE } from '../mm/args.ts';
import { formatVmstat } from '../mm/vmstat.ts';
import { parseOplog } from '../oplog/parse.ts';
import type { ReplayRecord } from '../oplog/replay.ts';
import { isDeviceOp } from '../oplog/schema.ts';
import { type OpsProgress, opsProgressBar } from './stress.ts';

/** Logs longer than this show a progress bar on stderr when it is a terminal. */
export const REPLAY_PROGRESS_MIN_OPS = 2000;

interface ReplayCliOptions {
  json?: boolean;
  pageSize?: string;
  hostPages?: string;
  blocks?: string;
  dir?: string;
  stats?: boolean;
  check?: boolean;
  policy?: string;
  devicePages?: string;
  batch?: string;
  snapshot?: boolean;
  inject?: string;
  retries?: string;
  maxFileSize?: string;
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
    // Node says "ENOENT: no such file or directory, open 'x'": keep the reason, the code and path are said once.
    const reason = (e as Error).message.replace(/^E[A-Z]+: /, '').replace(/, \w+ '.*'$/, '');
    throw new HmmlabError(code, `cannot read op log '${path}': ${reason}`);
  }
}

function humanLine(r: ReplayRecord): string {
  if (r.op === 'end') return `end         size ${r.size}  sha256 ${r.sha256}`;
  return `line ${String(r.i + 1).padEnd(6)} ${r.op.padEnd(8)} ${String(r.len).padStart(8)} bytes  sha256 ${r.sha256}`;
}

/** The fault batches in a few lines: totals, then the largest batches (Allen & Ge's per-batch log). */
export function formatBatchSummary(log: readonly FaultBatchRecord[], top = 10): string {
  if (log.length === 0) return 'fault batches: none';
  const sum = (f: (b: FaultBatchRecord) => number) => log.reduce((s, b) => s + f(b), 0);
  const lines = [
    `fault batches: ${log.length}; faults raw ${sum((b) => b.faultsRaw)}, duplicate ${sum((b) => b.faultsDuplicate)}, ` +
      `unique ${sum((b) => b.faultsUnique)} (read ${sum((b) => b.read)}, write ${sum((b) => b.write)}), ` +
      `failed ${sum((b) => b.failed)}, retried ${sum((b) => b.retried)}; ` +
      `bytes h2d ${sum((b) => b.bytesHostToDevice)}, d2h ${sum((b) => b.bytesDeviceToHost)}; ` +
      `service ${sum((b) => b.serviceMs).toFixed(1)} ms, copy ${sum((b) => b.copyMs).toFixed(1)} ms`,
    'kernel    launch batch      raw     dup  unique  read write    h2d bytes    d2h bytes  service ms',
  ];
  const biggest = [...log].sort((a, b) => b.faultsRaw - a.faultsRaw).slice(0, top);
  for (const b of biggest) {
    lines.push(
      `${b.kernel.padEnd(9)} ${String(b.launch).padStart(6)} ${String(b.batch).padStart(5)} ` +
        `${String(b.faultsRaw).padStart(8)} ${String(b.faultsDuplicate).padStart(7)} ${String(b.faultsUnique).padStart(7)} ` +
        `${String(b.read).padStart(5)} ${String(b.write).padStart(5)} ${String(b.bytesHostToDevice).padStart(12)} ` +
        `${String(b.bytesDeviceToHost).padStart(12)} ${b.serviceMs.toFixed(2).padStart(11)}`,
    );
  }
  if (log.length > top) lines.push(`(the ${top} largest of ${log.length} batches by raw faults)`);
  return lines.join('\n');
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
    .option(
      '--max-file-size <bytes>',
      'file-size limit: writes past it fail with EFBIG (default 1G, at most 8T; the backing file is ' +
        'sparse and the only thing that grows with it)',
    )
    .option('--dir <dir>', 'directory for the backing file (default: a temporary one, removed afterwards)')
    .option('--stats', 'print the vmstat counters to stderr at the end')
    .option(
      '--check',
      'compare every read, and the disk after each fsync and remount, with the reference model; ' +
        'check the invariants (single writer, legal page states, device entries) after every op',
    )
    .option('--policy <name>', "coherence policy: 'mirror' (Kara's scheme on the GPU) or 'none'", 'mirror')
    .option(
      '--device-pages <n>',
      'device frames (GPU memory, in pages): device eviction runs past it',
      '1024',
    )
    .option('--batch <n>', 'device faults serviced per batch (NVIDIA UVM: 256)', '256')
    .option('--snapshot', 'print the page-state table of the whole file to stderr before the final unmount')
    .option(
      '--inject <specs>',
      `fail the K-th attempt at a point, POINT@K[,POINT@K...]; points: ${INJECT_POINTS.join(', ')}. ` +
        'Each fault prints a line on stderr; an op it fails is reported and run again once, so --json ' +
        'prints what the run without --inject prints; device-lost ends the run (exit 1)',
    )
    .option('--retries <n>', 'with --inject: times an op that an injected fault failed is run again', '1')
    .action(async (logPath: string, opts: ReplayCliOptions, cmd: Command) => {
      const pageSize = parsePageSize(opts.pageSize, 4096);
      const hostPages = parseCount('--host-pages', opts.hostPages, 1024);
      const blocks = opts.blocks === undefined ? undefined : parseCount('--blocks', opts.blocks, 0, 0);
      const maxFileSize = parseMaxFileSize(opts.maxFileSize, DEFAULT_MAX_FILE_SIZE);
      let policyName = opts.policy ?? 'mirror';
      if (policyName !== 'mirror' && policyName !== 'none') {
        throw new HmmlabError('EINVAL', `--policy must be 'mirror' or 'none', got '${policyName}'`);
      }
      const devicePages = parseCount('--device-pages', opts.devicePages, 1024);
      const batchSize = parseCount('--batch', opts.batch, 256);
      const specs = opts.inject === undefined ? [] : parseInjectSpecs(opts.inject);
      const retries = parseCount('--retries', opts.retries, 1, 0);
      // The whole log is parsed (and its EOF rules checked) before anything touches the disk.
      const log = parseOplog(await readLog(logPath));
      // A log without device ops needs no GPU unless the user asked for the mirror policy by name:
      // the host-only page cache then runs it the same, also on a machine with no adapter.
      if (cmd.getOptionValueSource('policy') === 'default' && !log.ops.some(isDeviceOp)) policyName = 'none';
      // The bar is on stderr only; a line for stdout first clears it when both share the terminal.
      // Made just before the first op (the GPU may fail to open first); stopped before anything else
      // writes to stderr.
      let bar: OpsProgress | null = null;
      const out = (s: string) => {
        if (bar && process.stdout.isTTY) bar.clearLine();
        process.stdout.write(`${s}\n`);
      };
      let done = 0;
      // Loaded here so that other commands do not load the page cache or the GPU.
      const { replayOplog } = await import('../oplog/replay.ts');
      const { checkInvariants } = await import('../policy/invariants.ts');
      let device: { close(): void; batchLog: readonly FaultBatchRecord[] } | null = null;
      let policy: import('../policy/policy.ts').CoherencePolicy | undefined;
      if (policyName === 'mirror') {
        const { GpuDevice } = await import('../gpu/device.ts');
        const { DeviceMemory } = await import('../device/index.ts');
        const { MirrorPolicy } = await import('../policy/mirror.ts');
        const { gpuOptionsOf } = await import('./info.ts');
        const gpu = await GpuDevice.open(gpuOptionsOf(cmd));
        try {
          const dm = await DeviceMemory.create(gpu, { devicePages, pageSize, batchSize });
          policy = new MirrorPolicy(dm);
          device = {
            batchLog: dm.batchLog,
            close: () => {
              dm.destroy();
              gpu.destroy();
            },
          };
        } catch (e) {
          gpu.destroy();
          throw e;
        }
      }
      try {
        const { formatSnapshotTable } = await import('../policy/snapshot.ts');
        if (log.ops.length > REPLAY_PROGRESS_MIN_OPS) bar = opsProgressBar('replay', log.ops.length);
        const err = (s: string) => {
          if (bar) bar.clearLine();
          process.stderr.write(`${s}\n`);
        };
        const inject = specs.length
          ? new FaultInjector({ specs, onFire: (f) => err(formatInjected(f)) })
          : undefined;
        const result = await replayOplog(log.ops, {
          inject,
          retries,
          onRetry: (line, _op, e) =>
            err(
              `hmmlab: ${isHmmlabError(e) ? `${e.code}: ${e.message}` : String(e)}` +
                `${line ? '' : ' (final unmount)'}; running it again`,
            ),
          pageSize,
          hostPages,
          blocks,
          mount: { maxFileSize },
          policy,
          dir: opts.dir,
          check: opts.check,
          lines: log.lines,
          onRecord: (r) => out(opts.json ? JSON.stringify(r) : humanLine(r)),
          afterOp:
            opts.check || bar
              ? async (fs) => {
                  if (opts.check) await checkInvariants(fs);
                  bar?.tick(++done);
                }
              : undefined,
          beforeUnmount: opts.snapshot
            ? (fs, file) => {
                bar?.stop();
                const f = fs.openMappings.find((m) => m.name === file);
                const pages = f ? Math.ceil(f.size / pageSize) : 0;
                const rows = pages > 0 ? fs.snapshot(file, 0, pages - 1) : [];
                process.stderr.write(
                  `page states of ${file} before the final unmount:\n${formatSnapshotTable(rows)}\n`,
                );
              }
            : undefined,
        });
        bar?.stop();
        if (!opts.json) {
          const checked = opts.check
            ? `; every read and ${result.diskChecks} disk image${result.diskChecks === 1 ? '' : 's'} match the reference model, invariants hold`
            : '';
          out(
            `replayed ${result.ops} ops (${result.reads.length} reads) in ${result.elapsedMs.toFixed(0)} ms, ` +
              `page size ${pageSize}, ${hostPages} host pages, policy ${policyName}${checked}`,
          );
        }
        if (opts.stats) {
          process.stderr.write(`${formatVmstat(result.vmstat)}\n`);
          if (device) process.stderr.write(`${formatBatchSummary(device.batchLog)}\n`);
          process.stderr.write(`peak resident memory ${(peakRss() / 2 ** 20).toFixed(0)} MiB (VmHWM)\n`);
        }
      } finally {
        bar?.stop();
        device?.close();
      }
    });
}
