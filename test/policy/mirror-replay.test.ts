/**
 * `hmmlab replay` with each device policy (mirror, migrate), as a user runs it (a child process): a
 * generated log with device ops prints exactly what the reference model says on stdout (--json),
 * with --check (model and invariants after every op), --stats (device counters, fault-batch
 * summary) and --snapshot (page-state table) all on stderr, and the same again with faults injected
 * (--inject); `--policy none` refuses a log with device ops, naming the line.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { generateOplog } from '../../src/oplog/generate.ts';
import { modelOplog } from '../../src/oplog/model.ts';
import { isReadOp, type Op } from '../../src/oplog/schema.ts';
import { POLICIES } from './helpers.ts';

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

/** What the reference model says `--json` prints for `ops`. */
function modelRecords(ops: Op[]): object[] {
  const { reads, file } = modelOplog(ops);
  const want: object[] = [];
  ops.forEach((op, i) => {
    if (isReadOp(op)) want.push({ i, op: op.op, len: reads[i]!.length, sha256: sha(reads[i]!) });
  });
  want.push({ op: 'end', size: file.length, sha256: sha(file) });
  return want;
}

const records = (stdout: string) =>
  stdout
    .trimEnd()
    .split('\n')
    .map((l) => JSON.parse(l));

test.each(POLICIES)(
  'replay --json --policy %s --host-pages 8 prints what the reference model says',
  async (policy) => {
    const ops = generateOplog({ seed: SEED, ops: 150, device: true, maxFileSize: 64 * 1024 });
    expect(ops.some((o) => o.op === 'devwrite')).toBe(true);
    const path = join(dir, `dev-${policy}.jsonl`);
    await writeFile(path, `${ops.map((o) => JSON.stringify(o)).join('\n')}\n`);
    const r = hmmlab([
      'replay',
      path,
      '--json',
      '--policy',
      policy,
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
    expect(records(r.stdout)).toEqual(modelRecords(ops));
    expect(r.stderr).toMatch(/^device_faults_unique [1-9]\d*$/m);
    expect(r.stderr).toMatch(/^fault batches: [1-9]\d*; faults raw \d+, duplicate \d+, unique \d+/m);
    expect(r.stderr).toMatch(/^page states of oplog\.dat before the final unmount:\npage +host flags/m);
  },
);

test.each(POLICIES)('replay --json --policy %s --host-pages 8 --inject prints the same', async (policy) => {
  const ops = generateOplog({ seed: SEED + 1, ops: 120, device: true, maxFileSize: 48 * 1024 });
  const path = join(dir, `inject-${policy}.jsonl`);
  await writeFile(path, `${ops.map((o) => JSON.stringify(o)).join('\n')}\n`);
  const inject = 'copy-to-device@2,copy-from-device@2,pwrite@3,frame-alloc@1,kernel-launch@2,pread@4';
  const args = ['replay', path, '--json', '--policy', policy, '--host-pages', '8', '--device-pages', '4'];
  // Each fault fails one attempt; an op that meets them all is run once more for each.
  const retries = String(inject.split(',').length);
  const r = hmmlab([...args, '--inject', inject, '--retries', retries]);
  expect(r.status, r.stderr).toBe(0);
  expect(r.stderr).toMatch(/^hmmlab: injected /m);
  expect(records(r.stdout)).toEqual(modelRecords(ops));
});

test('--policy none refuses a log with device ops before anything runs, naming the line (exit 2)', async () => {
  const path = join(dir, 'none.jsonl');
  await writeFile(path, '{"op":"write","off":0,"len":64,"tag":1}\n{"op":"devread","off":0,"len":16}\n');
  const r = hmmlab(['replay', path, '--json', '--policy', 'none']);
  expect(r.status).toBe(2);
  expect(r.stdout).toBe('');
  expect(r.stderr.trim()).toBe(
    "hmmlab: ENODEV: line 2: devread needs a device: policy 'none' has none; replay with a device policy (--policy mirror or migrate)",
  );
});
