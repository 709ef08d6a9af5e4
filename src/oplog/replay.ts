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
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { firstDifference } from '../bench/random.ts';
import { HmmlabError, isHmmlabError } from '../errors.ts';
import { HmmFs } from '../fs/hmmfs.ts';
import { type FaultInjector, failsOp, NO_INJECT } from '../inject/inject.ts';
import { checkFileLimit } from '../mm/args.ts';
import { isDevicePolicy } from '../policy/device.ts';
import type { CoherencePolicy } from '../policy/policy.ts';
import { DEFAULT_FILE_SIZE_LIMIT, sizeAfter } from './eof.ts';
import { expectMismatch, landedRanges } from './expect.ts';
import { OplogModel } from './model.ts';
import { validateOplog } from './parse.ts';
import { PATTERN_MODULUS, patternBytes } from './pattern.ts';
import { describeOp, isDeviceOp, isReadOp, type Op, type ReadOp, type WriteOp } from './schema.ts';

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
  /** An attempt failed and will be run again (the CLI prints the error); `line` 0: the final unmount. */
  onRetry?: (line: number, op: Op | null, error: unknown) => void;
  /** Called after an attempt that failed, before it is run again (stress checks the invariants). */
  afterFailedAttempt?: (fs: HmmFs, line: number) => Promise<void> | void;
}

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
  elapsedMs: number;
}

/** What the device half implements on a file for devwrite/devread (one thread per 4-byte word). */
export interface DeviceFile {
  deviceWrite(off: number, len: number, tag: number): Promise<unknown>;
  deviceRead(off: number, len: number): Promise<Uint8Array>;
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

function compare(
  line: number,
  op: Op | { op: 'end' },
  what: string,
  base: number,
  got: Uint8Array,
  want: Uint8Array,
): void {
  const d = firstDifference(got, want);
  if (d < 0) return;
  throw new ReplayMismatch(
    line,
    op,
    base + d,
    `${what}: ${got.length} bytes, model ${want.length}; first difference at file offset ${base + d} ` +
      `(got ${hex(got[d])}, model ${hex(want[d])})`,
  );
}

type HmmFile = Awaited<ReturnType<HmmFs['open']>>;
type Vma = ReturnType<HmmFile['mmap']>;

/** The file under replay, reopened after each remount. */
class Target {
  vma: Vma | null = null;
  constructor(
    readonly fs: HmmFs,
    public f: HmmFile,
  ) {}

  /** The CPU mapping, made on first use (mapwrite/mapread), as fsx maps per op. */
  mapping(): Vma {
    this.vma ??= this.f.mmap();
    return this.vma;
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
 * The bytes a write-like op stores. EFBIG comes before the buffer: a log may name any length up to
 * 2^53-1, and a write past the file-size limit must fail as the filesystem would, not as an
 * allocation of that length.
 */
function dataOf(t: Target, op: WriteOp): Uint8Array {
  checkFileLimit(op.op, op.off, op.len, t.fs.maxFileSize);
  return patternBytes(op.off, op.len, op.tag);
}

/** Apply one op to the target; the bytes of a read-like op, null for others. `size` is i_size before it. */
async function applyOp(
  t: Target,
  op: Op,
  size: number,
  line: number,
  name: string,
): Promise<Uint8Array | null> {
  switch (op.op) {
    case 'write':
      if (op.len > 0) await t.f.write(op.off, dataOf(t, op));
      return null;
    case 'read':
      return await t.f.read(op.off, op.len);
    case 'mapwrite': {
      if (op.len === 0) return null;
      const data = dataOf(t, op); // EFBIG names the mapwrite, not the truncate below
      // A store past EOF would be SIGBUS: extend the file to off+len first, as fsx does.
      if (op.off + op.len > size) await t.f.truncate(op.off + op.len);
      await t.mapping().store(op.off, data);
      return null;
    }
    case 'mapread': {
      const n = Math.max(0, Math.min(op.len, size - op.off));
      return n > 0 ? await t.mapping().load(op.off, n) : new Uint8Array(0);
    }
    case 'devwrite':
      // The pattern depends on tag mod 251 only; reduced here, a tag near 2^53 stays exact on the
      // device side too (7 * tag would not be).
      await deviceOf(t.f, op, line).deviceWrite(op.off, op.len, op.tag % PATTERN_MODULUS);
      return null;
    case 'devread':
      return await deviceOf(t.f, op, line).deviceRead(op.off, op.len);
    case 'diowrite':
      if (op.len > 0) await t.f.writeDirect(op.off, dataOf(t, op));
      return null;
    case 'dioread':
      return await t.f.readDirect(op.off, op.len);
    case 'truncate':
      await t.f.truncate(op.size);
      return null;
    case 'punch': {
      const end = Math.min(op.off + op.len, size);
      if (op.off < end) await t.f.punchHole(op.off, end - op.off);
      return null;
    }
    case 'fsync':
      await t.f.fsync();
      return null;
    case 'dropcaches':
      await t.fs.dropCaches();
      return null;
    case 'remount':
      await t.fs.remount();
      t.f = await t.fs.open(name, { create: true });
      t.vma = null;
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
    });
    const mountedFs = fs;
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

    const diskCheck = async (line: number, op: Op | { op: 'end' }) => {
      if (!model) return;
      compare(line, op, 'backing file on disk', 0, await readFile(backing), model.bytes());
      diskChecks++;
    };

    let size = 0;
    for (let k = 0; k < ops.length; k++) {
      const op = ops[k];
      const line = lineOf(k);
      inject.line = line;
      options.beforeOp?.(line, op);
      let got: Uint8Array | null = null;
      let failed: HmmlabError | null = null; // failed as its `expect` said: the run goes on
      try {
        got = await withRetries(inject, retries, () => applyOp(t, op, size, line, name), onFailed(line, op));
      } catch (e) {
        failed = expectedFailure(op, line, e); // anything else is thrown, naming the line
      }
      if (!failed) expectMet(op, line);
      const want = model ? modelApply(model, op, line, failed, fs.pageSize) : null;
      size = sizeAfter(op, size, failed !== null);
      if (got && isReadOp(op)) {
        if (want) compare(line, op, 'returned', op.off, got, want);
        const r: ReadRecord = { i: line - 1, op: op.op, len: got.length, sha256: sha256(got) };
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

    inject.where = 'final unmount';
    await withRetries(inject, retries, () => mountedFs.unmount(), onFailed(0, null));
    mounted = false;
    const disk = await readFile(backing);
    const end: EndRecord = { op: 'end', size: disk.length, sha256: sha256(disk) };
    if (model) {
      compare(
        ops.length > 0 ? lineOf(ops.length - 1) : 0,
        { op: 'end' },
        'backing file on disk after unmount',
        0,
        disk,
        model.bytes(),
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
