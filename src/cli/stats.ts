/**
 * What `--stats` and `--stats-json FILE` report, for replay and stress: every vmstat counter (event
 * counters after the final unmount, gauges such as nr_file_pages and device_frames_used as they
 * stood before it), and the device's fault batches in time order, each tagged with the op (line)
 * whose kernel took the faults, as Allen & Ge's UVM study logs them. The batches' raw faults add up
 * to device_faults. A failed run reports too, as it stood when it failed.
 */
import { writeFile } from 'node:fs/promises';
import type { FaultBatchRecord } from '../device/stats.ts';
import { formatVmstat } from '../mm/vmstat.ts';
import { isGauge } from '../oplog/counters.ts';
import type { Op } from '../oplog/schema.ts';

/** One fault batch of --stats-json: the device's record, with the op (and stress run) that took it. */
export interface BatchJson extends FaultBatchRecord {
  /** The stress run (0-based) and its seed; absent for replay. */
  run?: number;
  seed?: number;
  /** The 1-based line of the op whose kernel took the faults, and the op's name. */
  line: number | null;
  op: string | null;
  pagesHostToDevice: number;
  pagesDeviceToHost: number;
}

/**
 * Collects the fault batches of one or more device memories (a stress run each), tagging each with
 * the op that was running: `opStarts(line)` before each op, `attach(log)` for a new device memory.
 */
export class FaultBatchCollector {
  readonly batches: BatchJson[] = [];
  private readonly seen = new WeakSet<FaultBatchRecord>();
  private log: readonly FaultBatchRecord[] = [];
  private line: number | null = null;
  private op: string | null = null;
  private run: { run: number; seed: number } | null = null;

  constructor(private readonly pageSize: number) {}

  /** The batch log of a new device memory (a new stress run). */
  attach(log: readonly FaultBatchRecord[]): void {
    this.collect();
    this.log = log;
    this.line = null;
    this.op = null;
  }

  /**
   * The op at `line` starts (of stress run `run`): the batches logged since the last call belong
   * to the op before.
   */
  opStarts(line: number, op: Op, run?: { run: number; seed: number }): void {
    this.collect();
    this.line = line;
    this.op = op.op;
    if (run) this.run = run;
  }

  /** Take the batches logged since the last call (the log may have dropped its oldest: scan back). */
  collect(): void {
    let k = this.log.length;
    while (k > 0 && !this.seen.has(this.log[k - 1])) k--;
    for (const b of this.log.slice(k)) {
      this.seen.add(b);
      this.batches.push({
        ...(this.run ?? {}),
        line: this.line,
        op: this.op,
        ...b,
        pagesHostToDevice: b.bytesHostToDevice / this.pageSize,
        pagesDeviceToHost: b.bytesDeviceToHost / this.pageSize,
        serviceMs: round3(b.serviceMs),
        copyMs: round3(b.copyMs),
      });
    }
  }
}

const round3 = (x: number) => Math.round(x * 1000) / 1000;

/** The fault batches in a few lines: totals, then the largest batches (Allen & Ge's per-batch log). */
export function formatBatchSummary(
  log: readonly FaultBatchRecord[] | readonly BatchJson[],
  top = 10,
): string {
  if (log.length === 0) return 'fault batches: none';
  const rows = log as readonly (FaultBatchRecord & Partial<BatchJson>)[];
  const sum = (f: (b: FaultBatchRecord) => number) => rows.reduce((s, b) => s + f(b), 0);
  const lines = [
    `fault batches: ${log.length}; faults raw ${sum((b) => b.faultsRaw)}, duplicate ${sum((b) => b.faultsDuplicate)}, ` +
      `unique ${sum((b) => b.faultsUnique)} (read ${sum((b) => b.read)}, write ${sum((b) => b.write)}), ` +
      `failed ${sum((b) => b.failed)}, retried ${sum((b) => b.retried)}; ` +
      `bytes h2d ${sum((b) => b.bytesHostToDevice)}, d2h ${sum((b) => b.bytesDeviceToHost)}; ` +
      `service ${sum((b) => b.serviceMs).toFixed(1)} ms, copy ${sum((b) => b.copyMs).toFixed(1)} ms`,
    'line   kernel    launch batch      raw     dup  unique  read write    h2d bytes    d2h bytes  service ms',
  ];
  const biggest = [...rows].sort((a, b) => b.faultsRaw - a.faultsRaw).slice(0, top);
  for (const b of biggest) {
    lines.push(
      `${String(b.line ?? '-').padEnd(6)} ${b.kernel.padEnd(9)} ${String(b.launch).padStart(6)} ${String(b.batch).padStart(5)} ` +
        `${String(b.faultsRaw).padStart(8)} ${String(b.faultsDuplicate).padStart(7)} ${String(b.faultsUnique).padStart(7)} ` +
        `${String(b.read).padStart(5)} ${String(b.write).padStart(5)} ${String(b.bytesHostToDevice).padStart(12)} ` +
        `${String(b.bytesDeviceToHost).padStart(12)} ${b.serviceMs.toFixed(2).padStart(11)}`,
    );
  }
  if (log.length > top) lines.push(`(the ${top} largest of ${log.length} batches by raw faults)`);
  return lines.join('\n');
}

/** Every counter of a run: events as they ended, gauges as they stood before the final unmount. */
export interface RunStats {
  counters: Record<string, number>;
  gauges: Record<string, number>;
}

/** Split vmstat readings into events (from `after`) and gauges (from `before`, the final unmount's eve). */
export function runStats(after: Record<string, number>, before: Record<string, number>): RunStats {
  const counters: Record<string, number> = {};
  const gauges: Record<string, number> = {};
  for (const [k, v] of Object.entries(after)) if (!isGauge(k)) counters[k] = v;
  for (const [k, v] of Object.entries(before)) if (isGauge(k)) gauges[k] = v;
  return { counters, gauges };
}

/** --stats: the counters and gauges as /proc/vmstat prints them, then the fault-batch summary. */
export function formatStats(s: RunStats, batches: readonly BatchJson[] | null): string {
  const text = formatVmstat({ ...s.counters, ...s.gauges });
  return batches ? `${text}\n${formatBatchSummary(batches)}` : text;
}

/** --stats-json FILE: one JSON object. */
export async function writeStatsJson(
  path: string,
  command: string,
  s: RunStats,
  batches: readonly BatchJson[],
  failure: { code: string; message: string } | null,
): Promise<void> {
  const body = { command, counters: s.counters, gauges: s.gauges, batches, failure };
  await writeFile(path, `${JSON.stringify(body, null, 1)}\n`);
}
