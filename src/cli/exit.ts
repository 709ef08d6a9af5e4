/**
 * The CLI contract: every failure is one line `hmmlab: CODE: message` on stderr and one exit status
 * from one table. The table is data (EXIT_STATUS_OF_CODE), read by one function (exitCodeFor), so
 * that a new error code or a new kind of failure is one row here:
 *
 *   0  success
 *   1  the run found a problem: a check failed, or a fault (injected or real) ended it
 *   2  bad usage or bad input, always caught before the disk is touched
 *   3  the environment: no adapter, a lost device, a backing directory that cannot be used
 *
 * Where one code means different things (ENOENT of an op log is bad input, of a backing directory
 * the environment), the place that throws says so with `withExitStatus`; exitCodeFor looks for such
 * a mark along the error's `cause` chain first. An exception that is not a HmmlabError is a bug:
 * EINTERNAL, exit 1, printed with what reproduces it (`setReproduceHint`: the seed, the log line);
 * its stack only under HMMLAB_DEBUG=1.
 */
import { CommanderError } from 'commander';
import { errorMessage, isHmmlabError } from '../errors.ts';
import { injectedPoint } from '../inject/inject.ts';

export const EXIT = { ok: 0, problem: 1, usage: 2, environment: 3 } as const;
export type ExitStatus = (typeof EXIT)[keyof typeof EXIT];

/** What each exit status means: the table of README and `hmmlab --help`. */
export const EXIT_STATUS_MEANING: Record<ExitStatus, string> = {
  0: 'success',
  1:
    'the run found a problem: a check failed (reference model, invariants, an "expect" of the log), ' +
    'or a fault ended it (ENOSPC, a refused device write, data lost)',
  2:
    'bad usage or bad input: an unknown option, a bad value, a malformed log, an op the policy ' +
    'refuses, a file-size limit, a file that exists; caught before the disk is touched',
  3: 'the environment: no WebGPU adapter, a lost or failing device, a backing directory that cannot be used',
};

/** The exit status of each error code (a code not listed: 1). */
export const EXIT_STATUS_OF_CODE: Readonly<Record<string, ExitStatus>> = {
  // bad usage or bad input
  EUSAGE: EXIT.usage,
  EINVAL: EXIT.usage,
  EOPLOG: EXIT.usage,
  EFBIG: EXIT.usage,
  EEXIST: EXIT.usage,
  ENOENT: EXIT.usage,
  EISDIR: EXIT.usage,
  ELIMIT: EXIT.usage,
  // the environment
  ENODEV: EXIT.environment,
  EGPU: EXIT.environment,
  ESHADER: EXIT.environment,
  ETIMEDOUT: EXIT.environment,
  ENOTDIR: EXIT.environment,
  EACCES: EXIT.environment,
  // a problem the run found
  EIO: EXIT.problem,
  ENOSPC: EXIT.problem,
  EFAULT: EXIT.problem,
  EROFS: EXIT.problem,
  EBADF: EXIT.problem,
  EEXPECT: EXIT.problem,
  EINTERNAL: EXIT.problem,
};

const marks = new WeakMap<object, ExitStatus>();

/** Give `err` its own exit status (where its code alone would say another); returns it. */
export function withExitStatus<E extends object>(err: E, status: ExitStatus): E {
  marks.set(err, status);
  return err;
}

/** A usage error of commander's (unknown option, missing argument, ...), or its --help/--version. */
const isCommanderError = (e: unknown): e is CommanderError => e instanceof CommanderError;

/** The exit status for an error: a mark on it or a cause, else its code's row, else 1 (a bug). */
export function exitCodeFor(err: unknown): ExitStatus {
  let e: unknown = err;
  for (let depth = 0; e && typeof e === 'object' && depth < 8; depth++) {
    const s = marks.get(e);
    if (s !== undefined) return s;
    if (injectedPoint(e) !== undefined) return EXIT.problem; // an injected fault ended the run
    e = (e as { cause?: unknown }).cause;
  }
  if (isCommanderError(err)) return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
  if (isHmmlabError(err)) return EXIT_STATUS_OF_CODE[err.code] ?? EXIT.problem;
  return EXIT.problem;
}

/** The code the one-line message shows. */
export function errorCode(err: unknown): string {
  if (isHmmlabError(err)) return err.code;
  if (isCommanderError(err)) return 'EUSAGE';
  return 'EINTERNAL';
}

let reproduceHint: string | null = null;

/** What reproduces the run now going (a seed, a log line): printed with an EINTERNAL. */
export function setReproduceHint(hint: string | null): void {
  reproduceHint = hint;
}

export const debugEnabled = (): boolean => /^(1|true|yes)$/i.test(process.env.HMMLAB_DEBUG ?? '');

/**
 * The text stderr gets for `err`: one line `hmmlab: CODE: message`; an EINTERNAL also says what
 * reproduces it, and its stack follows only under HMMLAB_DEBUG=1.
 */
export function formatError(err: unknown, o: { debug?: boolean; hint?: string | null } = {}): string {
  if (isHmmlabError(err)) return `hmmlab: ${err.code}: ${oneLine(err.message)}\n`;
  const name = err instanceof Error ? err.name : typeof err;
  const hint = o.hint === undefined ? reproduceHint : o.hint;
  const debug = o.debug ?? debugEnabled();
  const why =
    `a bug in hmmlab${hint ? `; to reproduce: ${hint}` : ''}` +
    (debug ? '' : '; HMMLAB_DEBUG=1 prints the stack');
  const line = `hmmlab: EINTERNAL: ${name}: ${oneLine(errorMessage(err))} (${why})\n`;
  const stack = debug && err instanceof Error && err.stack ? `${err.stack}\n` : '';
  return line + stack;
}

/** Messages are one line: a newline inside one (a library's) becomes "; ". */
export function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, '; ').trim();
}

/** The exit-status table as `hmmlab --help` prints it. */
export function exitStatusHelp(): string {
  const rows = Object.entries(EXIT_STATUS_MEANING).map(([k, v]) => `  ${k}  ${wrap(v, 90, '     ')}`);
  return ['Exit status:', ...rows, 'Errors are one line on stderr: hmmlab: CODE: message.'].join('\n');
}

/** Words of `text` in lines of at most `width` characters, the lines after the first indented. */
function wrap(text: string, width: number, indent: string): string {
  const lines: string[] = [];
  let line = '';
  for (const w of text.split(' ')) {
    if (line && line.length + 1 + w.length > width) {
      lines.push(line);
      line = w;
    } else line = line ? `${line} ${w}` : w;
  }
  lines.push(line);
  return lines.join(`\n${indent}`);
}
