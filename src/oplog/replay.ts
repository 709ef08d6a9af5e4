/**
 * The replay runner: apply an op log to one file on an HmmFs (the file starts empty) and report,
 * as docs/oplog.md says, `{i, op, len, sha256}` for each read-like op and finally `{op:'end', size,
 * sha256}` of the backing file on disk after the final unmount.
 *
 * With `check`, the reference model (model.ts) runs alongside: every read is compared with it,
 * and the backing file on disk after every fsync and remount and at the end; the first difference
 * stops the run with a ReplayMismatch naming the line, the op and the first differing offset.
 *
 * The log is validated whole before the disk is touched (alignment, EOF of device ops, the
 * file-size limit: EFBIG). An error of the filesystem (ENOSPC, ...) stops the run at that op, after
 * an unmount that writes back everything written so far; its message gains the line. An op with
 * `"expect":"CODE"` must fail with exactly CODE, and the run goes on (expect.ts: what of its data
 * landed, which the model applies); any other outcome stops the run with EEXPECT.
 *
 * Device ops call `deviceWrite(off, len, tag)` and `deviceRead(off, len)` on the file (DeviceFile);
 * they need a mount whose policy has a device (`policy`: mirror or migrate); without one, a log with
 * device ops is refused (ENODEV) before the disk is touched.
 *
 * Memory follows the budgets, not the ops: a write-like op longer than `streamChunk` (4 MiB) is
 * applied as successive calls of a chunk each, its pattern generated a chunk at a time (its blocks
 * reserved first, so ENOSPC fails it whole; another error part way leaves the chunks before it
 * written, as a short write(2) would, and a retry writes it all again); a read-like op's bytes are hashed, and in check mode compared with the model, as they
 * come, a chunk at a time (devread: a kernel chunk at a time, through the device's sink); the disk
 * is compared and hashed by streaming the backing file.
 */

import { createHash, type Hash } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { firstDifference } from '../bench/random.ts';
import { errorMessage, HmmlabError, isHmmlabError } from '../errors.ts';
import { HmmFs } from '../fs/hmmfs.ts';
import { type FaultInjector, failsOp, NO_INJECT } from '../inject/inject.ts';
import { checkFileLimit } from '../mm/args.ts';
import type { PageTracer } from '../mm/trace.ts';
import { isDevicePolicy } from '../policy/device.ts';
import type { CoherencePolicy } from '../policy/policy.ts';
import { DEFAULT_FILE_SIZE_LIMIT, sizeAfter } from './eof.ts';
import { expectMismatch, landedRanges } from './expect.ts';
import { OplogModel } from './model.ts';
import { validateOplog } from './parse.ts';
import { fillPattern, PATTERN_MODULUS } from './pattern.ts';
import { describeOp, isDeviceOp, isReadOp, type Op, type ReadOp, type WriteOp } from './schema.ts';
import { type FileIo, ReplayCpus, stableRanges } from './workers.ts';

export interface ReplayOptions {
  /** Directory of the backing file; default a fresh temporary directory, removed afterwards. */
  dir?: string;
  /** Name of the file the log is applied to (default 'oplog.dat'; truncated to empty first). */
  file?: string;
  pageSize?: number;
  hostPages?: number;
  blocks?: number;
  /** Further HmmFs.mount options (maxFileSize: the log is checked against it too). */
  mount?: Record<string, unknown>;
  /** The coherence policy (default host-only: device ops are refused). */
  policy?: CoherencePolicy;
  /** Called after every op (replay --check runs the invariant checker here); a throw stops the run. */
  afterOp?: (fs: HmmFs, line: number, op: Op) => Promise<void> | void;
  /** Called before each op is applied (the CLI tags fault batches with the op's line). */
  beforeOp?: (line: number, op: Op) => void;
  /**
   * Called once before the final unmount (replay --snapshot prints the page states here, --stats
   * reads the gauges), also when the run failed: `failure` is then the error that stopped it.
   */
  beforeUnmount?: (fs: HmmFs, file: string, failure?: unknown) => Promise<void> | void;
  /** Compare with the reference model as the run goes. */
  check?: boolean;
  /** 1-based line number of each op (parseOplog's `lines`); default k+1. Output `i` is line-1. */
  lines?: readonly number[];
  /** Called for each record as soon as it is known (the CLI streams them). */
  onRecord?: (r: ReplayRecord) => void;
  /**
   * Fault injection (replay --inject, stress --inject-rate). An op that an injected fault made fail
   * is run again, up to `retries` times (default 1): every op of the log format is idempotent, so
   * the run's records are those of a run without faults. A device-lost fault is not retried.
   */
  inject?: FaultInjector;
  retries?: number;
  /** --trace: every event of these pages is reported (src/mm/trace.ts); the op line is set here. */
  trace?: PageTracer;
  /** An attempt failed and will be run again (the CLI prints the error); `line` 0: the final unmount. */
  onRetry?: (line: number, op: Op | null, error: unknown) => void;
  /** Called after an attempt that failed, before it is run again (stress checks the invariants). */
  afterFailedAttempt?: (fs: HmmFs, line: number) => Promise<void> | void;
  /**
   * Bytes a long write-like op is applied in, and the backing file read in (a positive multiple of
   * 512, at least the page size; default STREAM_CHUNK). Tests lower it to stream at small sizes.
   */
  streamChunk?: number;
  /**
   * Run the file ops from this many CPU worker threads (src/oplog/workers.ts): op k from worker
   * k mod N; with `check` and two or more, the other workers watch pages the op leaves alone.
   * Device ops, drop_caches and remount stay the owner thread's. Default: none (the owner thread).
   */
  cpuThreads?: number;
}

/** Default ReplayOptions.streamChunk: what one call of a long op moves, 4 MiB. */
export const STREAM_CHUNK = 4 << 20;

export interface ReadRecord {
  /** 0-based line index of the op in the log. */
  i: number;
  op: ReadOp['op'];
  /** Bytes returned. */
  len: number;
  sha256: string;
}

export interface EndRecord {
  op: 'end';
  size: number;
  sha256: string;
}

export type ReplayRecord = ReadRecord | EndRecord;

export interface ReplayResult {
  reads: ReadRecord[];
  end: EndRecord;
  /** vmstat after the final unmount (src/mm names). */
  vmstat: Record<string, number>;
  /** Ops applied. */
  ops: number;
  /** Disk comparisons made (check mode: after each fsync, remount and at the end). */
  diskChecks: number;
  /** Ops whose file ops came from a CPU worker thread (ReplayOptions.cpuThreads; 0 without). */
  workerOps: number;
  /** Loads of watched pages the other workers made and checked meanwhile (0 without). */
  watchLoads: number;
  elapsedMs: number;
}

/** What the device half implements on a file for devwrite/devread (one thread per 4-byte word). */
export interface DeviceFile {
  deviceWrite(off: number, len: number, tag: number): Promise<unknown>;
  /** With a sink, the bytes go there in file order, chunk by chunk (sink(bytes, fileOffset)). */
  deviceRead(off: number, len: number, sink?: (bytes: Uint8Array, off: number) => void): Promise<Uint8Array>;
}

export function hasDevice(f: unknown): f is DeviceFile {
  const d = f as Partial<DeviceFile> | null;
  return typeof d?.deviceWrite === 'function' && typeof d?.deviceRead === 'function';
}

/**
 * A difference between hmmlab and the reference model: a bug in hmmlab, never in the log. `line`
 * is the op's line (for the end check: the last op's line); `offset` the first differing file offset.
 */
export class ReplayMismatch extends HmmlabError {
  constructor(
    readonly line: number,
    readonly op: Op | { op: 'end' },
    readonly offset: number,
    detail: string,
  ) {
    super(
      'EIO',
      `${op.op === 'end' ? `end of log (after line ${line})` : `line ${line} (${describeOp(op)})`}: ${detail}`,
    );
    this.name = 'ReplayMismatch';
  }
}

/** Re-exported: the demo and the tests compare bytes with the same function as the check. */
export { describeOp, firstDifference };

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

const hex = (b: number | undefined) => (b === undefined ? 'EOF' : `0x${b.toString(16).padStart(2, '0')}`);

/**
 * Bytes that come in chunks, in file order from `base`, compared with the model's bytes a chunk at
 * a time: the first difference is kept (a length difference counts, as firstDifference's), and
 * finish() throws it as a ReplayMismatch once the whole length is known.
 */
class StreamCheck {
  private total = 0;
  private diff: { at: number; got: number | undefined; want: number | undefined } | null = null;
  private scratch = new Uint8Array(0);

  constructor(
    private readonly model: OplogModel,
    private readonly base: number,
    /** Bytes the model has for the range. */
    private readonly expected: number,
  ) {}

  feed(bytes: Uint8Array): void {
    const at = this.total;
    this.total += bytes.length;
    if (this.diff) return;
    const inModel = Math.max(0, Math.min(bytes.length, this.expected - at));
    if (inModel > 0) {
      if (this.scratch.length < inModel) this.scratch = new Uint8Array(inModel);
      const want = this.model.readInto(this.scratch.subarray(0, inModel), this.base + at);
      const d = firstDifference(bytes.subarray(0, inModel), want);
      if (d >= 0) {
        this.diff = { at: at + d, got: bytes[d], want: want[d] };
        return;
      }
    }
    if (bytes.length > inModel) this.diff = { at: at + inModel, got: bytes[inModel], want: undefined };
  }

  finish(line: number, op: Op | { op: 'end' }, what: string): void {
    if (!this.diff && this.total < this.expected) {
      const want = this.model.readInto(new Uint8Array(1), this.base + this.total)[0];
      this.diff = { at: this.total, got: undefined, want };
    }
    if (!this.diff) return;
    const offset = this.base + this.diff.at;
    throw new ReplayMismatch(
      line,
      op,
      offset,
      `${what}: ${this.total} bytes, model ${this.expected}; first difference at file offset ${offset} ` +
        `(got ${hex(this.diff.got)}, model ${hex(this.diff.want)})`,
    );
  }
}

/** The bytes a read-like op returned, as they came: their count and hash, and the model's check. */
class ReadStream {
  len = 0;
  private readonly hash: Hash = createHash('sha256');

  constructor(
    private readonly base: number,
    readonly check: StreamCheck | null,
  ) {}

  /** The op's next bytes, at file offset `off` (they must follow the ones before). */
  take = (bytes: Uint8Array, off: number): void => {
    if (off !== this.base + this.len) {
      throw new Error(`replay: read bytes at offset ${off}, expected ${this.base + this.len}`);
    }
    this.len += bytes.length;
    this.hash.update(bytes);
    this.check?.feed(bytes);
  };

  digest(): string {
    return this.hash.digest('hex');
  }
}

/**
 * [off, off + len) as calls of at most `chunk` bytes: in one call when it fits, else cut at
 * multiples of `chunk` (page and sector aligned, so no call splits a page). Lazy: a read of 2^53
 * bytes stops at EOF, not after 2^31 spans.
 */
function* spans(off: number, len: number, chunk: number): Generator<[number, number]> {
  if (len <= chunk) {
    yield [off, len];
    return;
  }
  for (let o = off; o < off + len; ) {
    const n = Math.min(off + len, (Math.floor(o / chunk) + 1) * chunk) - o;
    yield [o, n];
    o += n;
  }
}

/** Read the backing file a chunk at a time into `take`: its size. */
async function streamBacking(
  path: string,
  chunk: number,
  take: (bytes: Uint8Array) => void,
): Promise<number> {
  const fh = await open(path, 'r');
  try {
    const buf = new Uint8Array(chunk);
    let pos = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, chunk, pos);
      if (bytesRead === 0) return pos;
      take(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
}

type HmmFile = Awaited<ReturnType<HmmFs['open']>>;
type Vma = ReturnType<HmmFile['mmap']>;

/** The file under replay, reopened after each remount. */
class Target {
  vma: Vma | null = null;
  /** The CPU worker threads the file ops run from (ReplayOptions.cpuThreads), if any. */
  cpus: ReplayCpus | null = null;
  /** The owner thread's file ops (they follow `f` across remounts). */
  readonly ownIo: FileIo = this.ownerIo();
  /** The thread the next op's file ops come from (the owner's own by default). */
  io: FileIo = this.ownIo;
  constructor(
    readonly fs: HmmFs,
    public f: HmmFile,
  ) {}

  /** The CPU mapping, made on first use (mapwrite/mapread), as fsx maps per op. */
  mapping(): Vma {
    this.vma ??= this.f.mmap();
    return this.vma;
  }

  /** The owner thread's file ops: the File's methods and its own mapping. */
  private ownerIo(): FileIo {
    return {
      read: (off, len) => this.f.read(off, len),
      write: (off, bytes) => this.f.write(off, bytes),
      readDirect: (off, len) => this.f.readDirect(off, len),
      writeDirect: (off, bytes) => this.f.writeDirect(off, bytes),
      fallocate: (off, len) => this.f.fallocate(off, len),
      truncate: (size) => this.f.truncate(size),
      punchHole: (off, len) => this.f.punchHole(off, len),
      fsync: () => this.f.fsync(),
      mapLoad: (off, len) => this.mapping().load(off, len),
      mapStore: (off, bytes) => this.mapping().store(off, bytes),
    };
  }
}

function deviceOf(f: HmmFile, op: Op, line: number): DeviceFile {
  if (!hasDevice(f) || !isDevicePolicy(f.fs.policy))
    throw new HmmlabError(
      'ENODEV',
      `line ${line}: ${op.op} needs a device: replay with a device policy (mirror or migrate)`,
    );
  return f;
}

/**
 * A write-like op, a chunk at a time: the pattern is generated into one buffer of at most
 * `chunk` bytes. EFBIG comes first: a log may name any length up to 2^53-1, and a write past the
 * file-size limit must fail as the filesystem would, before anything is written.
 */
async function applyWrite(t: Target, op: WriteOp, size: number, chunk: number): Promise<void> {
  if (op.len === 0) return;
  checkFileLimit(op.op, op.off, op.len, t.fs.maxFileSize);
  // A store past EOF would be SIGBUS: extend the file to off+len first, as fsx does.
  if (op.op === 'mapwrite' && op.off + op.len > size) await t.io.truncate(op.off + op.len);
  // Several calls: the blocks of the whole range first, so that ENOSPC fails the op before a byte
  // lands, as one write(2) or O_DIRECT write would (docs/oplog.md: a failed write wrote nothing).
  if (op.len > chunk && op.op !== 'mapwrite') await t.io.fallocate(op.off, op.len);
  const buf = new Uint8Array(Math.min(op.len, chunk));
  for (const [o, n] of spans(op.off, op.len, chunk)) {
    const data = fillPattern(buf.subarray(0, n), o, op.tag);
    if (op.op === 'write') await t.io.write(o, data);
    else if (op.op === 'mapwrite') await t.io.mapStore(o, data);
    else await t.io.writeDirect(o, data);
  }
}

/** A read-like op, its bytes streamed into `rs` a chunk at a time (read and dioread stop short at EOF). */
async function applyRead(t: Target, op: ReadOp, size: number, line: number, chunk: number, rs: ReadStream) {
  switch (op.op) {
    case 'read':
    case 'dioread':
      for (const [o, n] of spans(op.off, op.len, chunk)) {
        const got = op.op === 'read' ? await t.io.read(o, n) : await t.io.readDirect(o, n);
        rs.take(got, o);
        if (got.length < n) break;
      }
      return;
    case 'mapread': {
      const n = Math.max(0, Math.min(op.len, size - op.off));
      for (const [o, k] of n > 0 ? spans(op.off, n, chunk) : []) rs.take(await t.io.mapLoad(o, k), o);
      return;
    }
    case 'devread':
      await deviceOf(t.f, op, line).deviceRead(op.off, op.len, rs.take);
      return;
  }
}

/** Apply one op to the target; for a read-like op, its bytes as streamed. `size` is i_size before it. */
async function applyOp(
  t: Target,
  op: Op,
  size: number,
  line: number,
  name: string,
  chunk: number,
  model: OplogModel | null,
): Promise<ReadStream | null> {
  switch (op.op) {
    case 'write':
    case 'mapwrite':
    case 'diowrite':
      await applyWrite(t, op, size, chunk);
      return null;
    case 'read':
    case 'mapread':
    case 'dioread':
    case 'devread': {
      // Each attempt hashes (and checks) afresh: a retried read starts over.
      const expected = op.op === 'devread' ? op.len : Math.max(0, Math.min(op.off + op.len, size) - op.off);
      const rs = new ReadStream(op.off, model ? new StreamCheck(model, op.off, expected) : null);
      await applyRead(t, op, size, line, chunk, rs);
      return rs;
    }
    case 'devwrite':
      // The pattern depends on tag mod 251 only; reduced here, a tag near 2^53 stays exact on the
      // device side too (7 * tag would not be).
      await deviceOf(t.f, op, line).deviceWrite(op.off, op.len, op.tag % PATTERN_MODULUS);
      return null;
    case 'truncate':
      await t.io.truncate(op.size);
      return null;
    case 'punch': {
      const end = Math.min(op.off + op.len, size);
      if (op.off < end) await t.io.punchHole(op.off, end - op.off);
      return null;
    }
    case 'fsync':
      await t.io.fsync();
      return null;
    case 'dropcaches':
      await t.fs.dropCaches();
      return null;
    case 'remount':
      await t.fs.remount();
      t.f = await t.fs.open(name, { create: true });
      t.vma = null;
      t.cpus?.remounted();
      return null;
  }
}

/** The error of a failed op, its message naming the op's line. */
function atLine(e: unknown, line: number, op: Op): unknown {
  if (isHmmlabError(e) && !e.message.startsWith(`line ${line}`)) {
    return new HmmlabError(e.code, `line ${line} (${describeOp(op)}): ${e.message}`, { cause: e });
  }
  return e;
}

/**
 * Run one attempt of `fn` and, when an injected fault made it fail, run it again (up to `retries`
 * times): the engine's error paths leave every page as it was, so the second attempt starts from
 * the state the first one found. A fault that fired but fails nothing (a short write, a raced
 * install) or a device loss is no reason to retry.
 */
async function withRetries<T>(
  inject: FaultInjector,
  retries: number,
  fn: () => Promise<T>,
  onFailed: (e: unknown) => Promise<void>,
): Promise<T> {
  for (let tries = 0; ; tries++) {
    const seen = inject.log.length;
    try {
      return await fn();
    } catch (e) {
      const fired = inject.log.slice(seen);
      const transient = fired.some(failsOp) && !fired.some((f) => f.point === 'device-lost');
      if (!transient || tries >= retries) throw e;
      await onFailed(e);
    }
  }
}

/**
 * The error `e` of op `op` at `line`, when it is the failure the op expects; otherwise `e` is
 * thrown, its message naming the line (or EEXPECT, when the op expected another failure).
 */
function expectedFailure(op: Op, line: number, e: unknown): HmmlabError {
  if (op.expect === undefined) {
    if (isHmmlabError(e) && !e.message.startsWith(`line ${line}:`)) {
      throw new HmmlabError(e.code, `line ${line} (${describeOp(op)}): ${e.message}`, { cause: e });
    }
    throw e;
  }
  const mismatch = expectMismatch(op, line, e);
  if (mismatch) throw mismatch;
  return e as HmmlabError;
}

/** An op that succeeded: EEXPECT when it expected to fail. */
function expectMet(op: Op, line: number): void {
  const mismatch = expectMismatch(op, line, null);
  if (mismatch) throw mismatch;
}

/** The model applies the op (as it succeeded, or as it `failed`): the bytes of a read-like op. */
function modelApply(
  model: OplogModel,
  op: Op,
  line: number,
  failed: HmmlabError | null,
  pageSize: number,
): Uint8Array | null {
  if (!failed) return model.apply(op, line);
  const landed = landedRanges(op, failed, pageSize);
  if (!landed) {
    throw new HmmlabError(
      'EEXPECT',
      `line ${line} (${describeOp(op)}): the reference model cannot tell what a ${op.op} that failed ` +
        `with ${failed.code} left behind; replay without --check`,
      { cause: failed },
    );
  }
  model.applyFailed(op, landed);
  return null;
}

/** Apply `ops` to a fresh file on an HmmFs; see the module comment. */
export async function replayOplog(ops: readonly Op[], options: ReplayOptions = {}): Promise<ReplayResult> {
  const t0 = performance.now();
  const lineOf = (k: number) => options.lines?.[k] ?? k + 1;
  const maxFileSize = (options.mount?.maxFileSize as number | undefined) ?? DEFAULT_FILE_SIZE_LIMIT;
  validateOplog(ops, options.lines, { maxFileSize });
  const dev = ops.findIndex(isDeviceOp);
  if (dev >= 0 && !(options.policy && isDevicePolicy(options.policy))) {
    throw new HmmlabError(
      'ENODEV',
      `line ${lineOf(dev)}: ${ops[dev].op} needs a device: replay with a device policy (mirror or migrate)`,
    );
  }
  const inject = options.inject ?? NO_INJECT;
  const retries = options.retries ?? 1;
  const chunk = options.streamChunk ?? STREAM_CHUNK;
  if (!Number.isSafeInteger(chunk) || chunk < 512 || chunk % 512 !== 0) {
    throw new HmmlabError('EINVAL', `replay: stream chunk ${chunk} is not a positive multiple of 512`);
  }

  const ownDir = options.dir === undefined;
  const dir = options.dir ?? (await mkdtemp(join(tmpdir(), 'hmmlab-replay-')));
  const name = options.file ?? 'oplog.dat';
  const backing = join(dir, name);
  const model = options.check ? new OplogModel() : null;
  const reads: ReadRecord[] = [];
  let diskChecks = 0;
  let fs: HmmFs | null = null;
  let mounted = false;
  let unmountHookRan = false;
  let closeCpus: () => Promise<void> | undefined = () => undefined;
  try {
    fs = await HmmFs.mount({
      ...options.mount,
      maxFileSize,
      dir,
      pageSize: options.pageSize,
      hostPages: options.hostPages,
      blocks: options.blocks,
      policy: options.policy,
      inject,
      trace: options.trace,
    });
    const mountedFs = fs;
    let cpus: ReplayCpus | null = null;
    /** Reads of the checker and the snapshot are the lab's own: nothing is injected into them. */
    const quietly = <T>(fn: () => Promise<T> | T) => inject.suppressed(async () => fn());
    const onFailed = (line: number, op: Op | null) => async (e: unknown) => {
      options.onRetry?.(line, op, op ? atLine(e, line, op) : e);
      if (options.afterFailedAttempt) await quietly(() => options.afterFailedAttempt!(mountedFs, line));
    };
    mounted = true;
    const t = new Target(fs, await fs.open(name, { create: true }));
    if (dev >= 0) deviceOf(t.f, ops[dev], lineOf(dev));
    await t.f.truncate(0); // the log's file starts empty
    if (options.cpuThreads) {
      cpus = await ReplayCpus.start(fs, name, options.cpuThreads);
      t.cpus = cpus;
    }
    closeCpus = () => cpus?.close();

    const diskCheck = async (line: number, op: Op | { op: 'end' }) => {
      if (!model) return;
      const check = new StreamCheck(model, 0, model.size);
      await streamBacking(backing, chunk, (b) => check.feed(b));
      check.finish(line, op, 'backing file on disk');
      diskChecks++;
    };

    let size = 0;
    for (let k = 0; k < ops.length; k++) {
      const op = ops[k];
      const line = lineOf(k);
      inject.line = line;
      if (options.trace) options.trace.line = line;
      options.beforeOp?.(line, op);
      let got: ReadStream | null = null;
      let failed: HmmlabError | null = null; // failed as its `expect` said: the run goes on
      // From the workers: op k from worker k mod N, the others watching pages it leaves alone.
      const worker = cpus ? k % cpus.count : -1;
      t.io = cpus ? cpus.io(worker) : t.ownIo;
      // Not under fault injection: the watchers' faults would draw from the injector, and which
      // attempt K fails would be the machine's, not the log's.
      const watch = cpus && model && cpus.count > 1 && !options.inject;
      const watched = watch ? stableRanges(op, line, size, fs.pageSize, model) : [];
      const stopWatching = cpus ? await cpus.watch(worker, watched) : null;
      let seen: Awaited<ReturnType<NonNullable<typeof stopWatching>>> = null;
      try {
        got = await withRetries(
          inject,
          retries,
          () => applyOp(t, op, size, line, name, chunk, model),
          onFailed(line, op),
        );
      } catch (e) {
        failed = expectedFailure(op, line, e); // anything else is thrown, naming the line
      } finally {
        // The watchers stop whatever the op did (an op's own error goes first).
        seen = (await stopWatching?.()) ?? null;
      }
      if (seen?.error) {
        const e = seen.error;
        throw new HmmlabError(
          isHmmlabError(e) ? e.code : 'EIO',
          `line ${line} (${describeOp(op)}): cpu worker ${seen.cpu}, loading a page this op leaves alone ` +
            `while worker ${worker} ran it, failed: ${errorMessage(e)}`,
          { cause: e },
        );
      }
      if (seen?.mismatch) {
        const { cpu, mismatch: x } = seen;
        throw new ReplayMismatch(
          line,
          op,
          x.off,
          `cpu worker ${cpu}, loading a page this op leaves alone while worker ${worker} ran it, found ` +
            `0x${x.got.toString(16)} at file offset ${x.off}, the model 0x${x.want.toString(16)}`,
        );
      }
      if (!failed) expectMet(op, line);
      if (cpus && !isDeviceOp(op) && op.op !== 'dropcaches' && op.op !== 'remount') cpus.workerOps++;
      // A read changes nothing in the model: its bytes were checked as they came.
      if (model && !isReadOp(op)) modelApply(model, op, line, failed, fs.pageSize);
      size = sizeAfter(op, size, failed !== null);
      if (got && isReadOp(op)) {
        got.check?.finish(line, op, 'returned');
        const r: ReadRecord = { i: line - 1, op: op.op, len: got.len, sha256: got.digest() };
        reads.push(r);
        options.onRecord?.(r);
      }
      if (!failed && (op.op === 'fsync' || op.op === 'remount')) await diskCheck(line, op);
      if (options.afterOp) {
        try {
          await quietly(() => options.afterOp!(mountedFs, line, op));
        } catch (e) {
          if (isHmmlabError(e))
            throw new HmmlabError(e.code, `line ${line} (${describeOp(op)}): ${e.message}`, { cause: e });
          throw e;
        }
      }
    }
    unmountHookRan = true;
    if (options.beforeUnmount) await quietly(() => options.beforeUnmount!(mountedFs, name));
    await cpus?.close();

    inject.where = 'final unmount';
    await withRetries(inject, retries, () => mountedFs.unmount(), onFailed(0, null));
    mounted = false;
    // The end line: the backing file hashed (and checked) as it is read, a chunk at a time.
    const hash = createHash('sha256');
    const check = model ? new StreamCheck(model, 0, model.size) : null;
    const diskSize = await streamBacking(backing, chunk, (b) => {
      hash.update(b);
      check?.feed(b);
    });
    const end: EndRecord = { op: 'end', size: diskSize, sha256: hash.digest('hex') };
    if (check) {
      check.finish(
        ops.length > 0 ? lineOf(ops.length - 1) : 0,
        { op: 'end' },
        'backing file on disk after unmount',
      );
      diskChecks++;
    }
    options.onRecord?.(end);
    return {
      reads,
      end,
      vmstat: fs.vmstat(),
      ops: ops.length,
      diskChecks,
      workerOps: cpus?.workerOps ?? 0,
      watchLoads: cpus?.watchLoads ?? 0,
      elapsedMs: performance.now() - t0,
    };
  } catch (e) {
    // A failed run shows its state too (replay --snapshot, --stats), before the unmount below.
    if (fs && mounted && !unmountHookRan && options.beforeUnmount) {
      unmountHookRan = true;
      const f = fs;
      await inject.suppressed(async () => options.beforeUnmount!(f, name, e)).catch(() => {});
    }
    throw e;
  } finally {
    await closeCpus();
    // Stop cleanly: whatever was written so far goes to disk before the error propagates (an
    // unmount that an injected fault stopped is run again: it goes on where it stopped).
    if (fs && mounted) {
      const f = fs;
      inject.where = 'unmount after the error';
      await withRetries(
        inject,
        Math.max(retries, 1),
        () => f.unmount(),
        async () => {},
      ).catch(() => {});
    }
    inject.where = undefined;
    if (ownDir) await rm(dir, { recursive: true, force: true });
  }
}
