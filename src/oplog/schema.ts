/**
 * The op-log format (docs/oplog.md): one operation a line, applied in order to one file
 * that starts empty. This module holds the zod schemas, the `Op` type and the per-op rules that do
 * not depend on the file's state (alignment). The EOF rule of device ops depends on the ops before
 * them and lives in eof.ts.
 */
import { z } from 'zod';

/** A non-negative integer that a double can hold exactly (offsets, lengths, sizes, tags). */
const count = z.int().nonnegative();

/**
 * The error codes an op may say it expects (`"expect":"ENOSPC"`): replay then requires the op to
 * fail with exactly that code and goes on (as xfstests' expected errors). They are the codes an op
 * of a valid log can fail with and leave a mount that can go on.
 */
export const EXPECT_CODES = ['ENOSPC', 'EFAULT', 'EFBIG', 'EIO', 'EROFS'] as const;
export type ExpectCode = (typeof EXPECT_CODES)[number];

const range = { off: count, len: count };
const tagged = { ...range, tag: count };
const expect = { expect: z.enum(EXPECT_CODES).optional() };

/**
 * One schema per op, keyed by its name. A field an op does not have is an error (a typo such as
 * "tga" must not pass silently as an op without a tag); every op may carry `expect`.
 */
export const opSchemas = {
  write: z.strictObject({ op: z.literal('write'), ...tagged, ...expect }),
  read: z.strictObject({ op: z.literal('read'), ...range, ...expect }),
  mapwrite: z.strictObject({ op: z.literal('mapwrite'), ...tagged, ...expect }),
  mapread: z.strictObject({ op: z.literal('mapread'), ...range, ...expect }),
  devwrite: z.strictObject({ op: z.literal('devwrite'), ...tagged, ...expect }),
  devread: z.strictObject({ op: z.literal('devread'), ...range, ...expect }),
  diowrite: z.strictObject({ op: z.literal('diowrite'), ...tagged, ...expect }),
  dioread: z.strictObject({ op: z.literal('dioread'), ...range, ...expect }),
  truncate: z.strictObject({ op: z.literal('truncate'), size: count, ...expect }),
  punch: z.strictObject({ op: z.literal('punch'), ...range, ...expect }),
  fsync: z.strictObject({ op: z.literal('fsync'), ...expect }),
  dropcaches: z.strictObject({ op: z.literal('dropcaches'), ...expect }),
  remount: z.strictObject({ op: z.literal('remount'), ...expect }),
} as const;

/** The fields each op has, `op` and `expect` left out (for messages). */
export function fieldsOf(name: keyof typeof opSchemas): string[] {
  return Object.keys(opSchemas[name].shape).filter((k) => k !== 'op' && k !== 'expect');
}

type OpSchemas = typeof opSchemas;
export type OpName = keyof OpSchemas;
export type Op = { [N in OpName]: z.infer<OpSchemas[N]> }[OpName];
export type OpOf<N extends OpName> = Extract<Op, { op: N }>;

export const OP_NAMES = Object.keys(opSchemas) as OpName[];

/** Ops whose result is data: replay prints `{i, op, len, sha256}` for each. */
export const READ_OPS = ['read', 'mapread', 'dioread', 'devread'] as const;
export type ReadOp = OpOf<(typeof READ_OPS)[number]>;

/** Ops that store the pattern of their tag. */
export const WRITE_OPS = ['write', 'mapwrite', 'devwrite', 'diowrite'] as const;
export type WriteOp = OpOf<(typeof WRITE_OPS)[number]>;

/** Ops that run device threads: they need a device, and must lie within EOF. */
export const DEVICE_OPS = ['devread', 'devwrite'] as const;
export type DeviceOp = OpOf<(typeof DEVICE_OPS)[number]>;

export function isOpName(name: unknown): name is OpName {
  return typeof name === 'string' && Object.hasOwn(opSchemas, name);
}

export function isReadOp(op: Op): op is ReadOp {
  return (READ_OPS as readonly string[]).includes(op.op);
}

export function isWriteOp(op: Op): op is WriteOp {
  return (WRITE_OPS as readonly string[]).includes(op.op);
}

export function isDeviceOp(op: Op): op is DeviceOp {
  return (DEVICE_OPS as readonly string[]).includes(op.op);
}

/** Alignment of off and len: one thread per 4-byte word for device ops, 512-byte sectors for direct I/O. */
export function alignmentOf(op: Op): number {
  switch (op.op) {
    case 'devread':
    case 'devwrite':
      return 4;
    case 'dioread':
    case 'diowrite':
      return 512;
    default:
      return 1;
  }
}

/** The alignment rule of docs/oplog.md: null when `op` keeps it, else the reason. */
export function alignmentError(op: Op): string | null {
  const a = alignmentOf(op);
  if (a === 1 || !('off' in op)) return null;
  if (op.off % a !== 0) return `${op.op}: off ${op.off} is not a multiple of ${a}`;
  if (op.len % a !== 0) return `${op.op}: len ${op.len} is not a multiple of ${a}`;
  return null;
}

/** The fields of each op in the order the serializer writes them. */
const FIELD_ORDER = ['op', 'off', 'len', 'size', 'tag', 'expect'] as const;

/** One op as one JSON line (no newline), fields in a stable order. */
export function formatOp(op: Op): string {
  const o: Record<string, unknown> = {};
  const src = op as Record<string, unknown>;
  for (const k of FIELD_ORDER) if (k in src) o[k] = src[k];
  return JSON.stringify(o);
}

/** An op as messages name it: `write off=0 len=10 tag=1`. */
export function describeOp(op: Op | { op: 'end' }): string {
  const fields = Object.entries(op)
    .filter(([k]) => k !== 'op')
    .map(([k, v]) => `${k}=${v}`);
  return [op.op, ...fields].join(' ');
}

/** Ops -> JSON Lines text: one op a line, each line ending in a newline. */
export function serializeOplog(ops: readonly Op[]): string {
  let s = '';
  for (const op of ops) s += `${formatOp(op)}\n`;
  return s;
}
