/**
 * The op-log parser. Every error is HmmlabError('EOPLOG') whose message starts with
 * `line N:` (1-based) and says the reason; the first bad line stops the parse.
 *
 * Blank lines (empty or whitespace only, e.g. the newline that ends the file) are ignored but
 * still counted, so line numbers are those an editor shows. A trailing '\r' (CRLF files) and a
 * leading byte-order mark are dropped. Fields an op does not know are ignored.
 *
 * The whole log is checked before replay touches the disk, the EOF rule of device ops included
 * (EOF follows from the ops before, eof.ts), so a malformed log never half-runs.
 */
import { HmmlabError } from '../errors.ts';
import { eofError, sizeAfter } from './eof.ts';
import { alignmentError, isOpName, type Op, opSchemas } from './schema.ts';

/** A parsed log: `lines[k]` is the 1-based line number that `ops[k]` came from. */
export interface OpLog {
  ops: Op[];
  lines: number[];
}

export function oplogError(line: number, reason: string): HmmlabError {
  return new HmmlabError('EOPLOG', `line ${line}: ${reason}`);
}

function describe(v: unknown): string {
  return v === undefined ? 'nothing' : JSON.stringify(v);
}

/** One line of text -> one op, checked against its schema and the alignment rule. */
export function parseOp(text: string, line: number): Op {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw oplogError(line, `not valid JSON (${(e as Error).message})`);
  }
  return checkOp(raw, line);
}

/** A decoded JSON value -> one op, checked against its schema and the alignment rule. */
export function checkOp(raw: unknown, line: number): Op {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw oplogError(line, `not a JSON object: ${describe(raw)}`);
  }
  const obj = raw as Record<string, unknown>;
  if (!('op' in obj)) throw oplogError(line, 'missing field "op"');
  const name = obj.op;
  if (!isOpName(name)) throw oplogError(line, `unknown op ${describe(name)}`);

  const r = opSchemas[name].safeParse(obj);
  if (!r.success) {
    const field = String(r.error.issues[0].path[0] ?? '');
    const v = obj[field];
    if (v === undefined) throw oplogError(line, `${name}: missing field "${field}"`);
    throw oplogError(
      line,
      `${name}: "${field}" must be a non-negative integer (at most 2^53-1), got ${describe(v)}`,
    );
  }
  const op = r.data as Op;
  const bad = alignmentError(op);
  if (bad) throw oplogError(line, bad);
  return op;
}

/** JSON Lines text -> ops, or the first error (line number and reason). */
export function parseOplog(text: string): OpLog {
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
    const past = eofError(op, size);
    if (past) throw oplogError(line, past);
    size = sizeAfter(op, size);
    ops.push(op);
    lines.push(line);
  }
  return { ops, lines };
}

/**
 * Check ops that did not come from text (a generator, a test) as the parser would: schema,
 * alignment and the EOF rule. `lines[k]` names op k in errors (default k+1).
 */
export function validateOplog(ops: readonly Op[], lines?: readonly number[]): void {
  let size = 0;
  for (let k = 0; k < ops.length; k++) {
    const line = lines?.[k] ?? k + 1;
    const op = checkOp(ops[k], line);
    const past = eofError(op, size);
    if (past) throw oplogError(line, past);
    size = sizeAfter(op, size);
  }
}
