/**
 * The op-log parser. Every error is HmmlabError('EOPLOG') whose message starts with
 * `line N:` (1-based) and says the reason; the first bad line stops the parse. The one exception is
 * a write past the file-size limit: EFBIG, as the filesystem would say it, but at parse time.
 *
 * Blank lines (empty or whitespace only, e.g. the newline that ends the file) are ignored but
 * still counted, so line numbers are those an editor shows. A trailing '\r' (CRLF files) and a
 * leading byte-order mark are dropped. A field an op does not have is an error (a typo), and so is
 * a number past 2^53-1, reported as the log wrote it (JSON.parse would round it).
 *
 * The whole log is checked before replay touches the disk, the EOF rule of device ops and the
 * file-size limit included (EOF follows from the ops before, eof.ts), so a bad log never half-runs.
 */
import type { z } from 'zod';
import { HmmlabError } from '../errors.ts';
import { DEFAULT_FILE_SIZE_LIMIT, eofError, fileLimitError, sizeAfterLogged } from './eof.ts';
import {
  alignmentError,
  describeOp,
  EXPECT_CODES,
  fieldsOf,
  isOpName,
  type Op,
  type OpName,
  opSchemas,
} from './schema.ts';

/** A parsed log: `lines[k]` is the 1-based line number that `ops[k]` came from. */
export interface OpLog {
  ops: Op[];
  lines: number[];
}

/** The limits a log is checked against: those of the mount that will replay it. */
export interface OplogLimits {
  /** The mount's file-size limit in bytes (default 1 GiB, HmmFs's). */
  maxFileSize?: number;
}

export function oplogError(line: number, reason: string): HmmlabError {
  return new HmmlabError('EOPLOG', `line ${line}: ${reason}`);
}

function describe(v: unknown): string {
  return v === undefined ? 'nothing' : JSON.stringify(v);
}

/** The number token of `field` as the line wrote it (the last one: JSON.parse keeps the last). */
function rawNumber(text: string | undefined, field: string): string | null {
  if (text === undefined) return null;
  const key = JSON.stringify(field).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const all = [...text.matchAll(new RegExp(`${key}\\s*:\\s*(-?[0-9][0-9.eE+-]*)`, 'g'))];
  return all.at(-1)?.[1] ?? null;
}

/** The name of `names` within two edits of `word` (a typo's fix), if one is. */
function nearest(word: string, names: readonly string[]): string | null {
  const dist = (a: string, b: string): number => {
    const d = Array.from({ length: b.length + 1 }, (_, j) => j);
    for (let i = 1; i <= a.length; i++) {
      let prev = d[0];
      d[0] = i;
      for (let j = 1; j <= b.length; j++) {
        const t = d[j];
        d[j] = Math.min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
        prev = t;
      }
    }
    return d[b.length];
  };
  let best: string | null = null;
  let bestD = 3;
  for (const n of names) {
    const x = dist(word.toLowerCase(), n);
    if (x < bestD) [best, bestD] = [n, x];
  }
  return best;
}

const list = (names: readonly string[]) =>
  names.length === 0 ? 'no fields' : names.map((n) => `"${n}"`).join(', ');

/** One line of text -> one op, checked against its schema and the alignment rule. */
export function parseOp(text: string, line: number): Op {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw oplogError(line, `not valid JSON (${(e as Error).message})`);
  }
  return checkOp(raw, line, text);
}

/** Why `obj` does not fit the schema of op `name`: the first issue, worded for a person. */
function schemaReason(
  name: OpName,
  obj: Record<string, unknown>,
  text: string | undefined,
  issue: z.core.$ZodIssue,
): string {
  if (issue.code === 'unrecognized_keys') {
    const keys = issue.keys.map((k) => `"${k}"`).join(', ');
    const near = issue.keys.length === 1 ? nearest(issue.keys[0], [...fieldsOf(name), 'expect']) : null;
    return (
      `${name}: unknown field${issue.keys.length > 1 ? 's' : ''} ${keys}` +
      (near ? ` (did you mean "${near}"?)` : '') +
      `; ${name} has ${list(fieldsOf(name))} and an optional "expect"`
    );
  }
  const field = String(issue.path[0] ?? '');
  const v = obj[field];
  if (v === undefined) return `${name}: missing field "${field}"`;
  if (field === 'expect') {
    return `${name}: "expect" must be one of ${EXPECT_CODES.join(', ')}, got ${describe(v)}`;
  }
  const token = typeof v === 'number' ? rawNumber(text, field) : null;
  return (
    `${name}: "${field}" must be a non-negative integer of at most 2^53-1 (${Number.MAX_SAFE_INTEGER}), ` +
    `got ${token ?? describe(v)}`
  );
}

/** A decoded JSON value -> one op, checked against its schema and the alignment rule. */
export function checkOp(raw: unknown, line: number, text?: string): Op {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw oplogError(line, `not a JSON object: ${describe(raw)}`);
  }
  const obj = raw as Record<string, unknown>;
  if (!('op' in obj)) throw oplogError(line, 'missing field "op"');
  const name = obj.op;
  if (!isOpName(name)) throw oplogError(line, `unknown op ${describe(name)}`);

  const r = opSchemas[name].safeParse(obj);
  if (!r.success) {
    // A typo'd field first: "tga" is reported as such, not as a missing "tag".
    const issues = r.error.issues;
    const issue = issues.find((i) => i.code === 'unrecognized_keys') ?? issues[0];
    throw oplogError(line, schemaReason(name, obj, text, issue));
  }
  const op = r.data as Op;
  const bad = alignmentError(op);
  if (bad) throw oplogError(line, bad);
  return op;
}

/** The rules that depend on the ops before (EOF) and on the mount (file-size limit); the size after. */
function checkInContext(op: Op, line: number, size: number, limit: number): number {
  const past = eofError(op, size);
  if (past) throw oplogError(line, past);
  const big = fileLimitError(op, limit);
  if (big) throw new HmmlabError('EFBIG', `line ${line} (${describeOp(op)}): ${big.message}`);
  return sizeAfterLogged(op, size);
}

/** JSON Lines text -> ops, or the first error (line number and reason). */
export function parseOplog(text: string, limits: OplogLimits = {}): OpLog {
  const limit = limits.maxFileSize ?? DEFAULT_FILE_SIZE_LIMIT;
  const ops: Op[] = [];
  const lines: number[] = [];
  const rows = text.split('\n');
  let size = 0;
  for (let k = 0; k < rows.length; k++) {
    let s = rows[k];
    if (s.endsWith('\r')) s = s.slice(0, -1);
    if (k === 0 && s.startsWith('\uFEFF')) s = s.slice(1);
    if (s.trim() === '') continue;
    const line = k + 1;
    const op = parseOp(s, line);
    size = checkInContext(op, line, size, limit);
    ops.push(op);
    lines.push(line);
  }
  return { ops, lines };
}

/**
 * Check ops that did not come from text (a generator, a test) as the parser would: schema,
 * alignment, the EOF rule and the file-size limit. `lines[k]` names op k in errors (default k+1).
 */
export function validateOplog(ops: readonly Op[], lines?: readonly number[], limits: OplogLimits = {}): void {
  const limit = limits.maxFileSize ?? DEFAULT_FILE_SIZE_LIMIT;
  let size = 0;
  for (let k = 0; k < ops.length; k++) {
    const line = lines?.[k] ?? k + 1;
    size = checkInContext(checkOp(ops[k], line), line, size, limit);
  }
}
