/**
 * `hmmlab replay LOG`: apply an op log (docs/oplog.md) to a file on the page cache.
 * With --json, stdout carries exactly oplog.md's output: one `{i, op, len, sha256}` object per
 * read-like op, then the `{op:"end", size, sha256}` line, last. Statistics, the fault-batch
 * summary and the page-state snapshot go to stderr.
 *
 * The default policy is mirror (Kara's scheme on the GPU: device ops run); `--policy migrate` is
 * Glisse's scheme on the same device layer (src/policy/registry.ts); `--policy none` is the
 * host-only page cache, which refuses a log with device ops before anything runs (exit 2). A log
 * without device ops runs host-only unless a device policy is given by name, so it needs no GPU.
 *
 * Everything a user can get wrong is checked before the disk is touched: the options, the whole
 * log (EOF rules and the file-size limit included), the output paths, and the backing directory
 * (--dir: its oplog.dat is kept afterwards, and an existing one is not replaced without
 * --overwrite). --stats and --snapshot report a failed run too, as it stood when it failed.
 */

import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { peakRss } from '../bench/rss.ts';
import { parseCount, parseMaxFileSize, parsePageSize, plural } from '../bench/units.ts';
import { DEFAULT_REPLAY_POLICY, parseReplayPolicy, REPLAY_POLICIES } from '../device/replayPolicy.ts';
import { errorMessage, HmmlabError, isHmmlabError } from '../errors.ts';
import type { HmmFs } from '../fs/hmmfs.ts';
import { FaultInjector, formatInjected, INJECT_POINTS, parseInjectSpecs } from '../inject/inject.ts';
import { DEFAULT_MAX_FILE_SIZE } from '../mm/args.ts';
import { formatTraceEvent, PageTracer, parsePageSet } from '../mm/trace.ts';
import { parseOplog } from '../oplog/parse.ts';
import type { ReplayRecord } from '../oplog/replay.ts';
import { formatOp, isDeviceOp } from '../oplog/schema.ts';
import { EXIT, errorCode, setReproduceHint, withExitStatus } from './exit.ts';
import { checkBackingDir, checkOutputFile } from './paths.ts';
import { POLICY_HELP, parsePolicy, policyHasDevice } from './policy.ts';
import { type OpsProgress, opsProgressBar } from './progress.ts';
import { FaultBatchCollector, formatStats, runStats, writeStatsJson } from './stats.ts';

/** Logs longer than this show a progress bar on stderr when it is a terminal. */
export const REPLAY_PROGRESS_MIN_OPS = 2000;

interface ReplayCliOptions {
  json?: boolean;
  pageSize?: string;
  hostPages?: string;
  blocks?: string;
  dir?: string;
  overwrite?: boolean;
  stats?: boolean;
  statsJson?: string;
  check?: boolean;
  policy?: string;
  devicePages?: string;
  batch?: string;
  replayPolicy?: string;
  snapshot?: boolean;
  inject?: string;
  retries?: string;
  maxFileSize?: string;
  trace?: string;
  cpuThreads?: string;
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
    const node = (e as NodeJS.ErrnoException).code;
    const code = node === 'ENOENT' || node === 'EISDIR' || node === 'EACCES' ? node : 'EIO';
    // Node says "ENOENT: no such file or directory, open 'x'": keep the reason, the code and path are said once.
    const reason = (e as Error).message.replace(/^E[A-Z]+: /, '').replace(/, \w+ '.*'$/, '');
    // A log that cannot be read is bad input, whatever the reason.
    throw withExitStatus(new HmmlabError(code, `cannot read op log '${path}': ${reason}`), EXIT.usage);
  }
}

/** What --help says about the snapshot's columns and letters. */
export const SNAPSHOT_HELP = [
  'Snapshot (--snapshot) columns, one row a page:',
  '  host   C clean, D dirty, S stale (the device holds newer data), E device entry (page reclaimed,',
  '         data on the device), - absent',
  '  flags  L locked, U uptodate, D dirty, W writeback, R referenced, A on the LRU',
  "  map    CPU mappings of the page (mapcount); cpu, dev: the CPU's and the device's access (-, ro, rw)",
  "  frame  the device frame holding A'; dirty: the device PTE's DIRTY bit (a kernel stored to it)",
].join('\n');

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
    .option(
      '--max-file-size <bytes>',
      'file-size limit: writes past it fail with EFBIG, checked with the whole log before the disk is ' +
        'touched (default 1G, at most 8T; the backing file is sparse and the only thing that grows with it)',
    )
    .option(
      '--dir <dir>',
      'directory for the backing file DIR/oplog.dat, which is kept afterwards (default: a temporary ' +
        'directory, removed afterwards); an existing oplog.dat there is an error (EEXIST)',
    )
    .option('--overwrite', 'with --dir: replace an existing DIR/oplog.dat')
    .option('--stats', 'print the vmstat counters and a fault-batch summary to stderr at the end')
    .option(
      '--stats-json <file>',
      'write every counter and the fault batches (in time order, each with its op line) to FILE as JSON',
    )
    .option(
      '--check',
      'compare every read, and the disk after each fsync and remount, with the reference model; ' +
        'check the invariants (single writer, legal page states, device entries) after every op',
    )
    .option('--policy <name>', POLICY_HELP, 'mirror')
    .option(
      '--device-pages <n>',
      'device frames (GPU memory, in pages): device eviction runs past it',
      '1024',
    )
    .option('--batch <n>', 'device faults serviced per batch (NVIDIA UVM: 256)', '256')
    .option(
      '--replay-policy <name>',
      `when device faults are replayed, NVIDIA UVM's uvm_perf_fault_replay_policy: ${REPLAY_POLICIES.join(', ')} ` +
        '(block: after each 2 MiB va_block of a batch; batch: after each batch; batch-flush: after each batch, ' +
        'the rest of the fault buffer flushed; once: after every fetched fault was serviced)',
      DEFAULT_REPLAY_POLICY,
    )
    .option('--snapshot', 'print the page-state table of the whole file to stderr before the final unmount')
    .option(
      '--inject <specs>',
      `fail the K-th attempt at a point, POINT@K[,POINT@K...]; points: ${INJECT_POINTS.join(', ')}. ` +
        'Each fault prints a line on stderr; an op it fails is reported and run again, so --json ' +
        'prints what the run without --inject prints; device-lost ends the run (exit 1). See docs/fault-injection.md',
    )
    .option(
      '--trace <pages>',
      "one line on stderr per event that touches these pages (e.g. 0-3,7): the op line, the event, the page's " +
        "state before and after in the scheme tables' letters (A host, A' device, CPU) and the work done",
    )
    .option('--retries <n>', 'with --inject: times an op that an injected fault failed is run again', '1')
    .option(
      '--cpu-threads <n>',
      'make the file ops from N CPU worker threads (syscalls and loads and stores through their own ' +
        'mappings, op k from worker k mod N); with --check the other workers load and check pages the ' +
        "op leaves alone meanwhile. Device ops, drop_caches and remount stay the main thread's",
    )
    .addHelpText(
      'after',
      `\n${SNAPSHOT_HELP}\n\nExample:\n  hmmlab replay examples/dev.jsonl --check --stats --host-pages 8 --device-pages 64`,
    )
    .action(async (logPath: string, opts: ReplayCliOptions, cmd: Command) => {
      const pageSize = parsePageSize(opts.pageSize, 4096);
      const hostPages = parseCount('--host-pages', opts.hostPages, 1024);
      const blocks = opts.blocks === undefined ? undefined : parseCount('--blocks', opts.blocks, 0, 0);
      let policyName = parsePolicy(opts.policy);
      const devicePages = parseCount('--device-pages', opts.devicePages, 1024);
      const batchSize = parseCount('--batch', opts.batch, 256);
      const replayPolicy = parseReplayPolicy(opts.replayPolicy ?? DEFAULT_REPLAY_POLICY);
      const maxFileSize = parseMaxFileSize(opts.maxFileSize, DEFAULT_MAX_FILE_SIZE);
      const specs = opts.inject === undefined ? [] : parseInjectSpecs(opts.inject);
      const retries = parseCount('--retries', opts.retries, 1, 0);
      const tracePages = opts.trace === undefined ? null : parsePageSet(opts.trace);
      const cpuThreads = parseCount('--cpu-threads', opts.cpuThreads, 0, 1);
      if (opts.overwrite && opts.dir === undefined) {
        throw new HmmlabError('EINVAL', '--overwrite goes with --dir (the backing file it would replace)');
      }
      // The whole log is parsed (its EOF rules and the file-size limit checked) before anything
      // touches the disk.
      const log = parseOplog(await readLog(logPath), { maxFileSize });
      // A log without device ops needs no GPU unless the user asked for a device policy by name:
      // the host-only page cache then runs it the same, also on a machine with no adapter.
      const dev = log.ops.findIndex(isDeviceOp);
      if (cmd.getOptionValueSource('policy') === 'default' && dev < 0) policyName = 'none';
      if (dev >= 0 && !policyHasDevice(policyName)) {
        const err = new HmmlabError(
          'ENODEV',
          `line ${log.lines[dev]}: ${log.ops[dev].op} needs a device: policy '${policyName}' has none; ` +
            'replay with a device policy (--policy mirror or migrate)',
        );
        throw withExitStatus(err, EXIT.usage); // an op the policy refuses is bad input
      }
      if (opts.statsJson !== undefined) checkOutputFile('--stats-json', opts.statsJson);
      if (opts.dir !== undefined) checkBackingDir(opts.dir, 'oplog.dat', opts.overwrite === true);
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
      const { openCommandPolicy } = await import('./policy.ts');
      const host = await openCommandPolicy(cmd, policyName, {
        devicePages,
        pageSize,
        batch: batchSize,
        replayPolicy,
      });
      const batches = new FaultBatchCollector(pageSize);
      // The file system as the run left it, before its final unmount (also when it failed).
      let lastFs: HmmFs | null = null;
      let before: Record<string, number> = {};
      try {
        const mount = await host.forMount();
        batches.attach(mount.batchLog);
        const { formatSnapshotTable } = await import('../policy/snapshot.ts');
        if (log.ops.length > REPLAY_PROGRESS_MIN_OPS) bar = opsProgressBar('replay', log.ops.length);
        let result: Awaited<ReturnType<typeof replayOplog>> | null = null;
        let failure: unknown = null;
        const err = (line: string) => {
          bar?.clearLine();
          process.stderr.write(`${line}\n`);
        };
        const inject = specs.length
          ? new FaultInjector({ specs, onFire: (f) => err(formatInjected(f)) })
          : undefined;
        const trace = tracePages ? new PageTracer(tracePages, (e) => err(formatTraceEvent(e))) : undefined;
        try {
          result = await replayOplog(log.ops, {
            trace,
            inject,
            retries,
            onRetry: (line, _op, e) =>
              err(
                `hmmlab: ${isHmmlabError(e) ? `${e.code}: ${e.message}` : String(e)}` +
                  `${line ? '' : ' (final unmount)'}; running it again`,
              ),
            // An attempt an injected fault failed must leave a legal state too.
            afterFailedAttempt: opts.check ? (fs) => checkInvariants(fs) : undefined,
            pageSize,
            hostPages,
            blocks,
            policy: mount.policy,
            mount: { maxFileSize },
            dir: opts.dir,
            check: opts.check,
            cpuThreads: cpuThreads || undefined,
            lines: log.lines,
            onRecord: (r) => out(opts.json ? JSON.stringify(r) : humanLine(r)),
            beforeOp: (line, op) => {
              batches.opStarts(line, op);
              setReproduceHint(
                `line ${line} of ${logPath === '-' ? 'the log on stdin' : logPath}: ${formatOp(op)}`,
              );
            },
            afterOp:
              opts.check || bar
                ? async (fs) => {
                    if (opts.check) await checkInvariants(fs);
                    bar?.tick(++done);
                  }
                : undefined,
            beforeUnmount: (fs, file, failed) => {
              lastFs = fs;
              before = fs.vmstat();
              if (!opts.snapshot) return;
              bar?.stop();
              const f = fs.openMappings.find((m) => m.name === file);
              const pages = f ? Math.ceil(f.size / pageSize) : 0;
              const rows = pages > 0 ? fs.snapshot(file, 0, pages - 1) : [];
              const when = failed === undefined ? 'before the final unmount' : 'when the run failed';
              process.stderr.write(`page states of ${file} ${when}:\n${formatSnapshotTable(rows)}\n`);
            },
          });
        } catch (e) {
          failure = e;
          // An injected device loss (or a fault that failed an op again) ended the run: a problem
          // the run found (exit 1), not the environment's.
          if (inject && inject.total > 0 && e && typeof e === 'object') withExitStatus(e, EXIT.problem);
        } finally {
          bar?.stop();
          batches.collect();
          mount.close();
        }
        if (result && !opts.json) {
          const checked = opts.check
            ? `; every read and ${plural(result.diskChecks, 'disk image')} match the reference model, invariants hold`
            : '';
          const cpus = cpuThreads
            ? `; ${plural(result.workerOps, 'op')} made from ${plural(cpuThreads, 'cpu worker thread')}` +
              (result.watchLoads ? `, ${plural(result.watchLoads, 'watched load')} checked` : '')
            : '';
          out(
            `replayed ${plural(result.ops, 'op')} (${plural(result.reads.length, 'read')}) in ${result.elapsedMs.toFixed(0)} ms, ` +
              `page size ${pageSize}, ${plural(hostPages, 'host page')}, policy ${policyName}${checked}${cpus}`,
          );
        }
        if (opts.stats || opts.statsJson !== undefined) {
          // Events after the final unmount (its writeback included); gauges as they stood before it.
          const fsAtEnd = lastFs as HmmFs | null;
          const after = result?.vmstat ?? fsAtEnd?.vmstat() ?? {};
          const s = runStats(after, before);
          const device = policyHasDevice(policyName) ? batches.batches : null;
          if (opts.stats) {
            process.stderr.write(`${formatStats(s, device)}\n`);
            process.stderr.write(`peak resident memory ${(peakRss() / 2 ** 20).toFixed(0)} MiB (VmHWM)\n`);
          }
          if (opts.statsJson !== undefined) {
            const f = failure === null ? null : { code: errorCode(failure), message: errorMessage(failure) };
            await writeStatsJson(opts.statsJson, 'replay', s, batches.batches, f);
          }
        }
        if (failure !== null) throw failure;
      } finally {
        bar?.stop();
        host.close();
      }
    });
}
