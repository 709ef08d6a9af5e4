/**
 * `hmmlab replay` with the mirror policy, as a user runs it (a child process): a generated log with
 * device ops prints exactly what the reference model says on stdout (--json), with --check (model
 * and invariants after every op), --stats (device counters, fault-batch summary) and --snapshot
 * (page-state table) all on stderr; `--policy none` refuses a log with device ops, naming the line.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { generateOplog } from '../../src/oplog/generate.ts';
import { modelOplog } from '../../src/oplog/model.ts';
import { isReadOp } from '../../src/oplog/schema.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const SEED = Number(process.env.HMMLAB_SEED ?? Date.now() % 1_000_000);
console.log(`mirror replay: seed ${SEED} (HMMLAB_SEED=${SEED} reruns it)`);

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hmmlab-mirror-replay-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function hmmlab(args: string[]) {
  const r = spawnSync(process.execPath, [join(ROOT, 'bin/hmmlab.mjs'), ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 120_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

test('replay --json --policy mirror --host-pages 8 prints what the reference model says', async () => {
  const ops = generateOplog({ seed: SEED, ops: 150, device: true, maxFileSize: 64 * 1024 });
  expect(ops.some((o) => o.op === 'devwrite')).toBe(true);
  const path = join(dir, 'dev.jsonl');
  await writeFile(path, `${ops.map((o) => JSON.stringify(o)).join('\n')}\n`);
  const r = hmmlab([
    'replay',
    path,
    '--json',
    '--policy',
    'mirror',
    '--host-pages',
    '8',
    '--device-pages',
    '4',
    '--batch',
    '2',
    '--check',
    '--stats',
    '--snapshot',
  ]);
  expect(r.stderr).not.toMatch(/hmmlab: E/);
  expect(r.status).toBe(0);
  const { reads, file } = modelOplog(ops);
  const want: object[] = [];
  ops.forEach((op, i) => {
    if (isReadOp(op)) want.push({ i, op: op.op, len: reads[i]!.length, sha256: sha(reads[i]!) });
  });
  want.push({ op: 'end', size: file.length, sha256: sha(file) });
  const got = r.stdout
    .trimEnd()
    .split('\n')
    .map((l) => JSON.parse(l));
  expect(got).toEqual(want);
  expect(r.stderr).toMatch(/^device_faults_unique [1-9]\d*$/m);
  expect(r.stderr).toMatch(/^fault batches: [1-9]\d*; faults raw \d+, duplicate \d+, unique \d+/m);
  expect(r.stderr).toMatch(/^page states of oplog\.dat before the final unmount:\npage +host flags/m);
});

test('--policy none refuses a log with device ops before anything runs, naming the line', async () => {
  const path = join(dir, 'none.jsonl');
  await writeFile(path, '{"op":"write","off":0,"len":64,"tag":1}\n{"op":"devread","off":0,"len":16}\n');
  const r = hmmlab(['replay', path, '--json', '--policy', 'none']);
  expect(r.status).toBe(1);
  expect(r.stdout).toBe('');
  expect(r.stderr.trim()).toBe(
    'hmmlab: ENODEV: line 2: devread needs a device: replay with a device policy (mirror or migrate)',
  );
});
