/**
 * Paths a command writes, checked before it runs, so that a long run never ends in a stack trace
 * or a lost report because its output cannot be written: an output file's folder must exist and
 * be writable; a backing directory (--dir) must be a writable directory, and the backing file in
 * it is not replaced unless --overwrite says so.
 */
import { accessSync, constants, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { HmmlabError } from '../errors.ts';
import { EXIT, withExitStatus } from './exit.ts';

function statOf(path: string): ReturnType<typeof statSync> | null {
  return statSync(path, { throwIfNoEntry: false }) ?? null;
}

function writable(path: string): boolean {
  try {
    accessSync(path, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** `flag FILE` will be written: its folder exists and is writable, and FILE is not a folder. */
export function checkOutputFile(flag: string, path: string): void {
  const dir = dirname(resolve(path));
  const d = statOf(dir);
  if (!d) throw new HmmlabError('ENOENT', `${flag} ${path}: no folder ${dir}`);
  if (!d.isDirectory())
    throw withExitStatus(new HmmlabError('ENOTDIR', `${flag} ${path}: ${dir} is not a folder`), EXIT.usage);
  if (statOf(path)?.isDirectory())
    throw new HmmlabError('EISDIR', `${flag} ${path}: is a folder, not a file`);
  if (!writable(dir)) throw new HmmlabError('EACCES', `${flag} ${path}: folder ${dir} is not writable`);
}

/**
 * `--dir DIR` will hold the backing file `file`: DIR is a writable directory (else the environment:
 * exit 3), and DIR/file does not exist unless `overwrite` (else EEXIST: nothing is replaced).
 */
export function checkBackingDir(dir: string, file: string, overwrite: boolean): string {
  const d = statOf(dir);
  if (!d) {
    throw withExitStatus(new HmmlabError('ENOENT', `--dir ${dir}: no such directory`), EXIT.environment);
  }
  if (!d.isDirectory()) throw new HmmlabError('ENOTDIR', `--dir ${dir}: not a directory`);
  if (!writable(dir)) throw new HmmlabError('EACCES', `--dir ${dir}: the directory is not writable`);
  const backing = join(dir, file);
  const f = statOf(backing);
  if (f?.isDirectory()) {
    throw withExitStatus(
      new HmmlabError('EISDIR', `--dir ${dir}: ${backing} is a directory, not a backing file`),
      EXIT.environment,
    );
  }
  if (f && !overwrite) {
    throw new HmmlabError(
      'EEXIST',
      `--dir ${dir}: ${backing} exists; hmmlab would replace it: pass --overwrite, or another --dir`,
    );
  }
  return backing;
}
