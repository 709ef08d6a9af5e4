/**
 * The op-log format (docs/oplog.md): one operation a line, applied in order to one file
 * that starts empty. This module holds the zod schemas, the `Op` type and the per-op rules that do
 * not depend on the file's state (alignment). The EOF rule of device ops depends on the ops before
 * them and lives in eof.ts.
 */
import { z } from 'zod';

/** A non-negative integer that a double can hold exactly (offsets, lengths, sizes, tags). */
const count = z.int().nonnegative();

const range = { off: count, len: count };
const tagged = { ...range, tag: count };

/** One schema per op, keyed by its name. Unknown fields are ignored (stripped), as consumers may add some. */
export const opSchemas = {
  write: z.object({ op: z.literal('write'), ...tagged }),
  read: z.object({ op: z.literal('read'), ...range }),
  mapwrite: z.object({ op: z.literal('mapwrite'), ...tagged }),
  mapread: z.object({ op: z.literal('mapread'), ...range }),
  devwrite: z.object({ op: z.literal('devwrite'), ...tagged }),
  devread: z.object({ op: z.literal('devread'), ...range }),
  diowrite: z.object({ op: z.literal('diowrite'), ...tagged }),
  dioread: z.object({ op: z.literal('dioread'), ...range }),
  truncate: z.object({ op: z.literal('truncate'), size: count }),
  punch: z.object({ op: z.literal('punch'), ...range }),
  fsync: z.object({ op: z.literal('fsync') }),
  dropcaches: z.object({ op: z.literal('dropcaches') }),
  remount: z.object({ op: z.literal('remount') }),
} as const;

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
const FIELD_ORDER = ['op', 'off', 'len', 'size', 'tag'] as const;

/** One op as one JSON line (no newline), fields in a stable order. */
export function formatOp(op: Op): string {
  const o: Record<string, unknown> = {};
  const src = op as Record<string, unknown>;
  for (const k of FIELD_ORDER) if (k in src) o[k] = src[k];
  return JSON.stringify(o);
}

/** Ops -> JSON Lines text: one op a line, each line ending in a newline. */
export function serializeOplog(ops: readonly Op[]): string {
  let s = '';
  for (const op of ops) s += `${formatOp(op)}\n`;
  return s;
}
