/**
 * fsx from the CPU worker threads (`hmmlab stress --cpu-threads M`, `hmmlab replay --cpu-threads M`):
 * the op log's file ops run as syscalls and mapping accesses made by real worker threads
 * (src/cpu), op k from worker k mod M, and the reference model checks them as it checks the main
 * thread's. While one worker runs an op, every other worker watches: it loads a few pages the op
 * leaves alone through its own mapping, over and over, and compares them with the model (watch.ts),
 * so reclaim, writeback, device fault service and eviction that the op sets off meet concurrent
 * accesses on other pages, and a load that sees a lost or stale page fails the op. Device ops,
 * drop_caches and remount stay the owner thread's (a kernel launch, an admin's command).
 */
import { HmmFsCpuOwner } from '../cpu/hmmfsOwner.ts';
import { CpuThreads } from '../cpu/threads.ts';
import type { WatchRange, WatchResult } from '../cpu/watch.ts';
import type { HmmFs } from '../fs/hmmfs.ts';
import type { OplogModel } from './model.ts';
import type { Op } from './schema.ts';

/** The file ops of the op log, made by one thread. */
export interface FileIo {
  read(off: number, len: number): Promise<Uint8Array>;
  write(off: number, bytes: Uint8Array): Promise<void>;
  readDirect(off: number, len: number): Promise<Uint8Array>;
  writeDirect(off: number, bytes: Uint8Array): Promise<void>;
  fallocate(off: number, len: number): Promise<void>;
  truncate(size: number): Promise<void>;
  punchHole(off: number, len: number): Promise<void>;
  fsync(): Promise<void>;
  /** Loads and stores through the thread's shared mapping of the file. */
  mapLoad(off: number, len: number): Promise<Uint8Array>;
  mapStore(off: number, bytes: Uint8Array): Promise<void>;
}

/** What a watcher found: a difference from the model, or an error of its loads (their faults). */
export interface WatchSeen {
  cpu: number;
  mismatch: WatchResult['mismatch'];
  error?: unknown;
}

/** Pages a watcher loads at most while an op runs. */
const WATCHED_PAGES = 4;

/** The CPU threads of one replay: each worker's descriptor and mapping of the file, per mount. */
export class ReplayCpus {
  private readonly fds = new Map<number, number>();
  private readonly vmas = new Map<number, number>();
  private readonly ios = new Map<number, FileIo>();
  /** Ops whose file ops a worker made (the owner's device ops, drop_caches and remount not counted). */
  workerOps = 0;
  /** Loads of watched ranges the watchers made and checked. */
  watchLoads = 0;
  private closed = false;

  private constructor(
    readonly threads: CpuThreads,
    private readonly name: string,
  ) {}

  static async start(fs: HmmFs, name: string, n: number): Promise<ReplayCpus> {
    return new ReplayCpus(await CpuThreads.start(new HmmFsCpuOwner(fs), { threads: n }), name);
  }

  get count(): number {
    return this.threads.workers.length;
  }

  private async fd(k: number): Promise<number> {
    let fd = this.fds.get(k);
    if (fd === undefined) {
      fd = await this.threads.worker(k).api.open(this.name);
      this.fds.set(k, fd);
    }
    return fd;
  }

  private async vma(k: number): Promise<number> {
    let v = this.vmas.get(k);
    if (v === undefined) {
      v = await this.threads.worker(k).api.mmap(await this.fd(k));
      this.vmas.set(k, v);
    }
    return v;
  }

  /** Worker k's file ops, made once (the descriptor and mapping are looked up at each call). */
  io(k: number): FileIo {
    let io = this.ios.get(k);
    if (!io) {
      io = this.makeIo(k);
      this.ios.set(k, io);
    }
    return io;
  }

  private makeIo(k: number): FileIo {
    const w = this.threads.worker(k).api;
    const fd = () => this.fd(k);
    return {
      read: async (off, len) => w.read(await fd(), off, len),
      write: async (off, bytes) => w.write(await fd(), off, bytes),
      readDirect: async (off, len) => w.readDirect(await fd(), off, len),
      writeDirect: async (off, bytes) => w.writeDirect(await fd(), off, bytes),
      fallocate: async (off, len) => w.fallocate(await fd(), off, len),
      truncate: async (size) => w.truncate(await fd(), size),
      punchHole: async (off, len) => w.punchHole(await fd(), off, len),
      fsync: async () => w.fsync(await fd()),
      mapLoad: async (off, len) => w.load(await this.vma(k), off, len),
      mapStore: async (off, bytes) => w.store(await this.vma(k), off, bytes),
    };
  }

  /**
   * Every worker but `busy` watches `ranges` until the returned stop() is called; stop() resolves
   * with the first difference one of them found (worker and what), or null.
   */
  async watch(busy: number, ranges: WatchRange[]): Promise<() => Promise<WatchSeen | null>> {
    const ctl = new SharedArrayBuffer(4);
    // Settled at once, a failure too: a watcher's error must not go unhandled until stop().
    const watchers: Promise<{ cpu: number; r: WatchResult; error?: unknown }>[] = [];
    if (ranges.length > 0) {
      for (let k = 0; k < this.count; k++) {
        if (k === busy) continue;
        const vma = await this.vma(k);
        watchers.push(
          this.threads
            .worker(k)
            .api.watch(vma, ranges, ctl)
            .then(
              (r) => ({ cpu: k, r }),
              (error: unknown) => ({ cpu: k, r: { loads: 0, mismatch: null }, error }),
            ),
        );
      }
    }
    return async () => {
      Atomics.store(new Int32Array(ctl), 0, 1);
      const seen = await Promise.all(watchers);
      for (const { r } of seen) this.watchLoads += r.loads;
      for (const { cpu, r, error } of seen) {
        if (error !== undefined) return { cpu, mismatch: null, error };
        if (r.mismatch) return { cpu, mismatch: r.mismatch };
      }
      return null;
    };
  }

  /** After a remount: the descriptors and mappings of before are closed; new ones are made on use. */
  remounted(): void {
    this.fds.clear();
    this.vmas.clear();
  }

  /** Terminate the workers (once: the error path closes them too). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.threads.close();
  }
}

/** The bytes an op leaves alone: below i_size before and after it, outside the pages it writes. */
function affected(op: Op, size: number): { from: number; to: number; bound: number } {
  switch (op.op) {
    case 'write':
    case 'mapwrite':
    case 'diowrite':
    case 'devwrite':
    case 'punch':
      return { from: op.off, to: op.off + op.len, bound: size };
    case 'truncate':
      return { from: 0, to: 0, bound: Math.min(size, op.size) };
    default:
      return { from: 0, to: 0, bound: size };
  }
}

/**
 * Up to WATCHED_PAGES ranges of whole pages (cut at the bound) that `op` leaves alone, with the
 * model's bytes of them; chosen from the op's line, so a replay watches the same pages.
 */
export function stableRanges(
  op: Op,
  line: number,
  size: number,
  pageSize: number,
  model: OplogModel,
): WatchRange[] {
  if (op.op === 'remount') return [];
  const { from, to, bound } = affected(op, size);
  const first = Math.floor(from / pageSize);
  const last = to > from ? Math.floor((to - 1) / pageSize) : -1;
  const nr = Math.ceil(bound / pageSize);
  // Drawn, not listed: a file may have billions of pages (--max-file-size up to 8 TiB).
  const pages = new Set<number>();
  let x = (line * 0x9e3779b1) >>> 0 || 1;
  for (let tries = 0; tries < 8 * WATCHED_PAGES && pages.size < WATCHED_PAGES && nr > 0; tries++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const p = (x >>> 0) % nr;
    if (p < first || p > last) pages.add(p);
  }
  const out: WatchRange[] = [];
  for (const p of pages) {
    const off = p * pageSize;
    const len = Math.min(pageSize, bound - off);
    out.push({ off, bytes: model.readInto(new Uint8Array(len), off) });
  }
  return out;
}
