/**
 * `hmmlab replay` as a user runs it (a child process): oplog.md's --json output, the exit status 2
 * and a one-line message naming the line for a malformed log (no stack trace), EINVAL for bad
 * options, stdin as '-'.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { modelOplog } from '../../src/oplog/model.ts';
import { parseOplog } from '../../src/oplog/parse.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const LOG = [
  '{"op":"write","off":0,"len":10000,"tag":1}',
  '{"op":"read","off":4000,"len":100}',
  '',
  '{"op":"mapwrite","off":12000,"len":50,"tag":3}',
  '{"op":"fsync"}',
  '{"op":"mapread","off":11990,"len":100}',
  '{"op":"dioread","off":0,"len":512}',
  '{"op":"remount"}',
  '{"op":"read","off":20000,"len":5}',
].join('\n');

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hmmlab-oplog-cli-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function hmmlab(args: string[], input?: string) {
  const r = spawnSync(process.execPath, [join(ROOT, 'bin/hmmlab.mjs'), ...args], {
    cwd: ROOT,
    input,
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('replay --json prints a line per read and the end line last, as oplog.md says', async () => {
  const path = join(dir, 'good.jsonl');
  await writeFile(path, LOG);
  const r = hmmlab(['replay', path, '--json', '--host-pages', '8', '--stats', '--check']);
  expect(r.stderr).toMatch(/^pgpgin \d+$/m); // --stats goes to stderr
  expect(r.status).toBe(0);
  const lines = r.stdout
    .trimEnd()
    .split('\n')
    .map((l) => JSON.parse(l));
  const { ops } = parseOplog(LOG);
  const { reads, file } = modelOplog(ops);
  const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
  const want = [
    { i: 1, op: 'read', len: 100, sha256: sha(reads[1]!) },
    { i: 5, op: 'mapread', len: 60, sha256: sha(reads[4]!) },
    { i: 6, op: 'dioread', len: 512, sha256: sha(reads[5]!) },
    { i: 8, op: 'read', len: 0, sha256: sha(new Uint8Array(0)) },
    { op: 'end', size: 12050, sha256: sha(file) },
  ];
  expect(lines).toEqual(want);
});

test('a malformed log exits 2 with one line naming the line and the reason, no stack trace', async () => {
  const path = join(dir, 'bad.jsonl');
  await writeFile(path, `${LOG}\n{"op":"diowrite","off":512,"len":100,"tag":9}\n`);
  const r = hmmlab(['replay', path, '--json']);
  expect(r.status).toBe(2);
  expect(r.stdout).toBe(''); // parsed whole before anything ran
  expect(r.stderr.trim()).toBe('hmmlab: EOPLOG: line 10: diowrite: len 100 is not a multiple of 512');
  expect(r.stderr).not.toMatch(/\n\s+at /);
});

test("a bad option is EINVAL (exit 2); '-' reads the log from stdin", () => {
  const bad = hmmlab(['replay', '-', '--page-size', '3000'], LOG);
  expect(bad.status).toBe(2);
  expect(bad.stderr).toMatch(/EINVAL: --page-size must be a power of two/);
  const ok = hmmlab(['replay', '-', '--page-size', '64K'], LOG);
  expect(ok.status).toBe(0);
  expect(ok.stdout).toMatch(/^end +size 12050 +sha256 [0-9a-f]{64}$/m);
  expect(ok.stdout).toMatch(/^replayed 8 ops \(4 reads\)/m);
});
