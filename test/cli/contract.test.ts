/**
 * The CLI contract (README "Exit status"): one exit-status table (0 success, 1 the run found a
 * problem, 2 bad usage or bad input, 3 the environment) read by one function, exitCodeFor; every
 * error one line `hmmlab: CODE: message`, an unknown option too (a hint, not the help); an
 * EINTERNAL says what reproduces it and shows its stack only under HMMLAB_DEBUG=1; output paths and
 * the backing directory are checked before anything runs, and a backing file is never replaced
 * without --overwrite. Child processes of the real command on real files (no GPU needed here:
 * every case is host-only or stops before the GPU opens).
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CommanderError } from 'commander';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { EXIT, EXIT_STATUS_OF_CODE, exitCodeFor, formatError, withExitStatus } from '../../src/cli/exit.ts';
import { buildProgram, commandPath, usageMessage } from '../../src/cli/main.ts';
import { HmmlabError } from '../../src/errors.ts';
import { hmmlab, ourStderr } from '../helpers/cli.ts';

const LOG = '{"op":"write","off":0,"len":5000,"tag":1}\n{"op":"read","off":0,"len":100}\n';

let dir: string;
let log: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hmmlab-contract-'));
  log = join(dir, 'w.jsonl');
  await writeFile(log, LOG);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('exitCodeFor: the table as data', () => {
  test.each([
    ['EOPLOG', EXIT.usage],
    ['EINVAL', EXIT.usage],
    ['EFBIG', EXIT.usage],
    ['EEXIST', EXIT.usage],
    ['ENODEV', EXIT.environment],
    ['EGPU', EXIT.environment],
    ['ENOTDIR', EXIT.environment],
    ['ENOSPC', EXIT.problem],
    ['EFAULT', EXIT.problem],
    ['EIO', EXIT.problem],
    ['EEXPECT', EXIT.problem],
  ] as const)('%s exits %i', (code, status) => {
    expect(exitCodeFor(new HmmlabError(code, 'x'))).toBe(status);
    expect(EXIT_STATUS_OF_CODE[code]).toBe(status);
  });

  test('a mark on the error or on a cause wins over the code', () => {
    const inner = withExitStatus(new HmmlabError('ENODEV', 'refused'), EXIT.usage);
    expect(exitCodeFor(inner)).toBe(EXIT.usage);
    expect(exitCodeFor(new HmmlabError('ENODEV', 'line 2: refused', { cause: inner }))).toBe(EXIT.usage);
    expect(exitCodeFor(new HmmlabError('ENODEV', 'no adapter'))).toBe(EXIT.environment);
  });

  test('a bug (not a HmmlabError) is 1; a commander usage error 2, its --help 0', () => {
    expect(exitCodeFor(new TypeError('x is not a function'))).toBe(EXIT.problem);
    expect(exitCodeFor(new CommanderError(1, 'commander.unknownOption', 'error: unknown option'))).toBe(2);
    expect(exitCodeFor(new CommanderError(0, 'commander.helpDisplayed', '(outputHelp)'))).toBe(0);
  });
});

describe('one line per error', () => {
  test('an EINTERNAL says what reproduces it; its stack only under HMMLAB_DEBUG=1', () => {
    let err: unknown;
    try {
      (null as unknown as { f(): void }).f();
    } catch (e) {
      err = e;
    }
    const plain = formatError(err, { debug: false, hint: 'line 5 of w.jsonl' });
    expect(plain.trimEnd().split('\n')).toHaveLength(1);
    expect(plain).toMatch(
      /^hmmlab: EINTERNAL: TypeError: .* \(a bug in hmmlab; to reproduce: line 5 of w\.jsonl; HMMLAB_DEBUG=1 prints the stack\)\n$/,
    );
    const debug = formatError(err, { debug: true, hint: null });
    expect(debug.split('\n')[0]).toMatch(/^hmmlab: EINTERNAL: TypeError: .*\(a bug in hmmlab\)$/);
    expect(debug).toMatch(/\n\s+at /);
  });

  test('a HmmlabError never shows a stack, and a message with a newline stays one line', () => {
    expect(formatError(new HmmlabError('EIO', 'a\nb'), { debug: true })).toBe('hmmlab: EIO: a; b\n');
  });

  test("commander's usage errors become one line with a hint naming the subcommand's --help", () => {
    const program = buildProgram();
    const e = new CommanderError(
      1,
      'commander.unknownOption',
      "error: unknown option '--jsn'\n(Did you mean --json?)",
    );
    expect(usageMessage(e, commandPath(program, ['--adapter', 'x', 'replay', 'a.jsonl', '--jsn']))).toBe(
      "unknown option '--jsn' (did you mean --json?); see 'hmmlab replay --help'",
    );
    expect(commandPath(program, ['bench', 'copy', '--sizes', '4K'])).toEqual(['bench', 'copy']);
  });
});

// Concurrent: child processes that stop before any GPU opens.
describe.concurrent('the command line', () => {
  test('an unknown option: one line with a hint, exit 2, not the whole help', async () => {
    const r = await hmmlab(['replay', log, '--jsn']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(ourStderr(r.stderr)).toEqual([
      "hmmlab: EUSAGE: unknown option '--jsn' (did you mean --json?); see 'hmmlab replay --help'",
    ]);
  });

  test.each([
    [['nope'], /^hmmlab: EUSAGE: unknown command 'nope'; see 'hmmlab --help'$/],
    [['replay'], /^hmmlab: EUSAGE: missing required argument 'log'; see 'hmmlab replay --help'$/],
    [
      ['stress', '--ops'],
      /^hmmlab: EUSAGE: option '--ops <n>' argument missing; see 'hmmlab stress --help'$/,
    ],
  ])('%j is a one-line EUSAGE, exit 2', async (args, line) => {
    const r = await hmmlab(args);
    expect(r.code).toBe(2);
    expect(ourStderr(r.stderr)).toEqual([expect.stringMatching(line)]);
  });

  test('--version prints the version; --help has the exit-status table', async () => {
    const pkg = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8'));
    const v = await hmmlab(['--version']);
    expect(v.code).toBe(0);
    expect(v.stdout).toBe(`hmmlab ${pkg.version}\n`);
    const h = await hmmlab(['--help']);
    expect(h.code).toBe(0);
    expect(h.stdout).toMatch(/^Exit status:\n {2}0 {2}success\n {2}1 {2}the run found a problem/m);
    expect(h.stdout).toMatch(/^ {2}2 {2}bad usage or bad input/m);
    expect(h.stdout).toMatch(/^ {2}3 {2}the environment/m);
  });

  test('--dir naming a file is ENOTDIR, a missing one ENOENT: the environment, exit 3', async () => {
    const onFile = await hmmlab(['replay', log, '--dir', log]);
    expect(onFile.code).toBe(3);
    expect(ourStderr(onFile.stderr)).toEqual([`hmmlab: ENOTDIR: --dir ${log}: not a directory`]);
    const missing = await hmmlab(['replay', log, '--dir', join(dir, 'no-such')]);
    expect(missing.code).toBe(3);
    expect(ourStderr(missing.stderr)).toEqual([
      `hmmlab: ENOENT: --dir ${join(dir, 'no-such')}: no such directory`,
    ]);
  });

  test('an existing backing file is not replaced (EEXIST, exit 2) unless --overwrite; it is kept after', async () => {
    const sub = await mkdtemp(join(dir, 'keep-'));
    const backing = join(sub, 'oplog.dat');
    await writeFile(backing, 'a user file');
    const refused = await hmmlab(['replay', log, '--dir', sub]);
    expect(refused.code).toBe(2);
    expect(ourStderr(refused.stderr)).toEqual([
      `hmmlab: EEXIST: --dir ${sub}: ${backing} exists; hmmlab would replace it: pass --overwrite, or another --dir`,
    ]);
    expect(await readFile(backing, 'utf8')).toBe('a user file');
    const stress = await hmmlab(['stress', '--policy', 'none', '--ops', '10', '--dir', sub]);
    expect(stress.code).toBe(2);
    expect(stress.stdout).toBe('');
    expect(await readFile(backing, 'utf8')).toBe('a user file');

    const ok = await hmmlab(['replay', log, '--dir', sub, '--overwrite', '--json']);
    expect(ok.code, ok.stderr).toBe(0);
    expect((await readFile(backing)).length).toBe(5000); // the log's file, kept after the run
    const lonely = await hmmlab(['replay', log, '--overwrite']);
    expect(lonely.code).toBe(2);
    expect(ourStderr(lonely.stderr)).toEqual([
      'hmmlab: EINVAL: --overwrite goes with --dir (the backing file it would replace)',
    ]);
  });

  test('stress checks its output paths before the run: nothing runs, one line, exit 2', async () => {
    const args = ['stress', '--policy', 'none', '--ops', '50', '--seed', '1'];
    const missing = await hmmlab([...args, '--save-ops', '/nonexistent/x.jsonl']);
    expect(missing.code).toBe(2);
    expect(missing.stdout).toBe(''); // not even the header: the run did not start
    expect(ourStderr(missing.stderr)).toEqual([
      'hmmlab: ENOENT: --save-ops /nonexistent/x.jsonl: no folder /nonexistent',
    ]);
    const folder = await hmmlab([...args, '--save-ops', dir]);
    expect(folder.code).toBe(2);
    expect(ourStderr(folder.stderr)).toEqual([`hmmlab: EISDIR: --save-ops ${dir}: is a folder, not a file`]);
    const stats = await hmmlab([...args, '--stats-json', '/nonexistent/s.json']);
    expect(stats.code).toBe(2);
    expect(ourStderr(stats.stderr)).toEqual([
      'hmmlab: ENOENT: --stats-json /nonexistent/s.json: no folder /nonexistent',
    ]);
  });

  test('a failing stress run reports the failure first, then saves the log (no stack trace)', async () => {
    const save = join(dir, 'fail.jsonl');
    const r = await hmmlab([
      ...'stress --policy none --ops 200 --seed 5 --blocks 0 --save-ops'.split(' '),
      save,
    ]);
    expect(r.code).toBe(1);
    const err = ourStderr(r.stderr);
    expect(err[0]).toMatch(/^stress FAILED: seed 5 \(run 1 of 1\), line \d+: /);
    expect(err[1]).toMatch(/^reason: ENOSPC: /);
    expect(err[2]).toMatch(
      new RegExp(`^saved the log up to and including line \\d+ \\(\\d+ ops?\\) to ${save}$`),
    );
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  test('plurals follow the numbers', async () => {
    const one = join(dir, 'one.jsonl');
    await writeFile(one, '{"op":"read","off":0,"len":1}\n');
    const r = await hmmlab(['replay', one, '--host-pages', '1']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(
      /^replayed 1 op \(1 read\) in \d+ ms, page size 4096, 1 host page, policy none$/m,
    );
    const s = await hmmlab(['stress', '--policy', 'none', '--ops', '1', '--host-pages', '1', '--seed', '3']);
    expect(s.code, s.stderr).toBe(0);
    expect(s.stdout).toMatch(
      /^stress: seed 3 .*; 1 run of 1 op, policy none \(host only\), page size 4 KiB, 1 host page,/m,
    );
    expect(s.stdout).toMatch(/^stress passed: 1 op in 1 run,/m);
  });
});
