/**
 * `hmmlab replay` as a user runs it (a child process): docs/oplog.md's --json output, the exit status 2
 * and a one-line message naming the line for a malformed log (no stack trace), EINVAL for bad
 * options, stdin as '-'.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { modelOplog } from '../../src/oplog/model.ts';
import { parseOplog } from '../../src/oplog/parse.ts';
import { patternBytes } from '../../src/oplog/pattern.ts';
import { hmmlab, ourStderr } from '../helpers/cli.ts';

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

test('replay --json prints a line per read and the end line last, as oplog.md says', async () => {
  const path = join(dir, 'good.jsonl');
  await writeFile(path, LOG);
  const r = await hmmlab(['replay', path, '--json', '--host-pages', '8', '--stats', '--check']);
  expect(r.stderr).toMatch(/^pgpgin \d+$/m); // --stats goes to stderr
  expect(r.code).toBe(0);
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
  const r = await hmmlab(['replay', path, '--json']);
  expect(r.code).toBe(2);
  expect(r.stdout).toBe(''); // parsed whole before anything ran
  expect(r.stderr.trim()).toBe('hmmlab: EOPLOG: line 10: diowrite: len 100 is not a multiple of 512');
  expect(r.stderr).not.toMatch(/\n\s+at /);
});

test("a bad option is EINVAL (exit 2); '-' reads the log from stdin", async () => {
  const bad = await hmmlab(['replay', '-', '--page-size', '3000'], { input: LOG });
  expect(bad.code).toBe(2);
  expect(bad.stderr).toMatch(/EINVAL: bad --page-size "3000": expected a power of two/);
  const ok = await hmmlab(['replay', '-', '--page-size', '64K'], { input: LOG });
  expect(ok.code).toBe(0);
  expect(ok.stdout).toMatch(/^end +size 12050 +sha256 [0-9a-f]{64}$/m);
  expect(ok.stdout).toMatch(/^replayed 8 ops \(4 reads\)/m);
});

test('an empty log prints only the end line of the empty file', async () => {
  const path = join(dir, 'empty.jsonl');
  await writeFile(path, '');
  const r = await hmmlab(['replay', path, '--json', '--policy', 'none']);
  expect(r.code).toBe(0);
  expect(r.stdout).toBe(
    `${JSON.stringify({ op: 'end', size: 0, sha256: createHash('sha256').digest('hex') })}\n`,
  );
});

test('a missing log is ENOENT: one line naming the file, exit 2, no stack trace', async () => {
  const path = join(dir, 'no-such.jsonl');
  const r = await hmmlab(['replay', path, '--json', '--policy', 'none']);
  expect(r.code).toBe(2);
  expect(r.stdout).toBe('');
  expect(r.stderr).toBe(`hmmlab: ENOENT: cannot read op log '${path}': no such file or directory\n`);
});

test.each([
  ['write', 0],
  ['mapwrite', 0],
  ['diowrite', 0],
  ['write', 2 ** 40],
])(
  'a %s at off %i of len 2^40 is EFBIG naming the line, exit 2, before the disk is touched',
  async (op, off) => {
    const sub = await mkdtemp(join(dir, 'efbig-'));
    const path = join(sub, 'huge.jsonl');
    const first = '{"op":"write","off":0,"len":5000,"tag":3}';
    await writeFile(path, `${first}\n${JSON.stringify({ op, off, len: 2 ** 40, tag: 4 })}\n`);
    const r = await hmmlab(['replay', path, '--json', '--policy', 'none', '--dir', sub]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(ourStderr(r.stderr)).toEqual([
      `hmmlab: EFBIG: line 2 (${op} off=${off} len=${2 ** 40} tag=4): ${op} at offset ${off} length ${2 ** 40} ` +
        `ends at ${off + 2 ** 40}, past the file-size limit ${2 ** 30}`,
    ]);
    expect(existsSync(join(sub, 'oplog.dat'))).toBe(false);
  },
);

test('with device ops, --json --stats --snapshot --check print only the records on stdout', async () => {
  const path = join(dir, 'device.jsonl');
  const log = [
    '{"op":"write","off":0,"len":40000,"tag":1}',
    '{"op":"devwrite","off":4096,"len":8192,"tag":2}',
    '{"op":"devread","off":0,"len":40000}',
    '{"op":"dropcaches"}',
    '{"op":"mapread","off":100,"len":9000}',
    '{"op":"punch","off":30000,"len":100000}',
    '{"op":"dioread","off":0,"len":1099511627776}',
  ].join('\n');
  await writeFile(path, log);
  const r = await hmmlab([
    'replay',
    path,
    '--json',
    '--stats',
    '--snapshot',
    '--check',
    '--device-pages',
    '4',
  ]);
  expect(r.code, r.stderr).toBe(0);
  expect(r.stderr).toMatch(/^page states of oplog\.dat before the final unmount:$/m);
  expect(r.stderr).toMatch(/^device_faults \d+$/m);
  expect(r.stderr).toMatch(/^fault batches: \d+/m);
  const { ops } = parseOplog(log);
  const { reads, file } = modelOplog(ops);
  const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
  expect(
    r.stdout
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l)),
  ).toEqual([
    { i: 2, op: 'devread', len: 40000, sha256: sha(reads[2]!) },
    { i: 4, op: 'mapread', len: 9000, sha256: sha(reads[4]!) },
    { i: 6, op: 'dioread', len: 40000, sha256: sha(reads[6]!) },
    { op: 'end', size: 40000, sha256: sha(file) },
  ]);
});

test('a devwrite whose tag is 2^53-1 stores the pattern of that tag (--check)', async () => {
  const path = join(dir, 'bigtag.jsonl');
  const tag = Number.MAX_SAFE_INTEGER;
  await writeFile(
    path,
    `{"op":"truncate","size":8192}\n{"op":"devwrite","off":4,"len":8000,"tag":${tag}}\n{"op":"devread","off":0,"len":8192}\n`,
  );
  const r = await hmmlab(['replay', path, '--json', '--check']);
  expect(r.code, r.stderr).toBe(0);
  const want = new Uint8Array(8192);
  want.set(patternBytes(4, 8000, tag), 4);
  const sha = createHash('sha256').update(want).digest('hex');
  expect(JSON.parse(r.stdout.split('\n')[0])).toEqual({ i: 2, op: 'devread', len: 8192, sha256: sha });
});

test('replay of a log without device ops needs no GPU unless --policy mirror is named', async () => {
  const path = join(dir, 'nodevice.jsonl');
  await writeFile(path, LOG);
  const hostOnly = await hmmlab(['--adapter', 'no-such-adapter', 'replay', path, '--json']);
  expect(hostOnly.code).toBe(0);
  expect(hostOnly.stdout.trimEnd().split('\n').at(-1)).toMatch(/^\{"op":"end","size":12050,/);
  const named = await hmmlab([
    '--adapter',
    'no-such-adapter',
    'replay',
    path,
    '--json',
    '--policy',
    'mirror',
  ]);
  expect(named.code).toBe(3); // the environment: no such adapter
  expect(named.stdout).toBe('');
  expect(ourStderr(named.stderr)).toEqual([
    expect.stringMatching(/^hmmlab: ENODEV: no WebGPU adapter named "no-such-adapter"/),
  ]);
});

test('--max-file-size lifts the 1 GiB limit (the backing file is sparse); past 8 TiB it is EINVAL', async () => {
  const path = join(dir, 'far.jsonl');
  const off = 2 ** 30; // ends past the default limit; the end hash reads the 1 GiB hole
  await writeFile(
    path,
    `{"op":"write","off":${off},"len":100,"tag":1}\n{"op":"read","off":${off - 10},"len":20}\n`,
  );
  const refused = await hmmlab(['replay', path, '--json']);
  expect(refused.code).toBe(2); // a file-size limit: bad input, found before the disk is touched
  expect(ourStderr(refused.stderr)).toEqual([
    expect.stringMatching(/^hmmlab: EFBIG: line 1 .*past the file-size limit 1073741824$/),
  ]);
  const r = await hmmlab(['replay', path, '--json', '--max-file-size', '2G']);
  expect(r.code).toBe(0);
  const read = {
    i: 1,
    op: 'read',
    len: 20,
    sha256: createHash('sha256')
      .update(Buffer.concat([Buffer.alloc(10), patternBytes(off, 10, 1)]))
      .digest('hex'),
  };
  expect(JSON.parse(r.stdout.split('\n')[0])).toEqual(read);
  expect(JSON.parse(r.stdout.trimEnd().split('\n').at(-1)!)).toMatchObject({ op: 'end', size: off + 100 });
  const low = await hmmlab(['replay', path, '--max-file-size', '1M']);
  expect(ourStderr(low.stderr)).toEqual([
    expect.stringMatching(/EFBIG: .*past the file-size limit 1048576$/),
  ]);
  const big = await hmmlab(['replay', path, '--max-file-size', '9T']);
  expect([big.code, ourStderr(big.stderr)]).toEqual([
    2,
    ['hmmlab: EINVAL: bad --max-file-size "9T": at most 8 TiB (8T)'],
  ]);
});

test('replay --replay-policy: each of the four prints what the model says (the log checked), a bad one exits 2', async () => {
  const log = new URL('../../examples/dev.jsonl', import.meta.url).pathname;
  const outs: string[] = [];
  for (const policy of ['block', 'batch', 'batch-flush', 'once']) {
    // Batches of 2 pages: the policies replay at different points of every fault-driven op.
    const r = await hmmlab(['replay', log, '--json', '--check', '--batch', '2', '--replay-policy', policy]);
    expect(r.code, `${policy}: ${r.stderr}`).toBe(0);
    outs.push(r.stdout);
  }
  expect(new Set(outs).size).toBe(1);
  const bad = await hmmlab(['replay', log, '--replay-policy', 'sometimes']);
  expect([bad.code, ourStderr(bad.stderr)]).toEqual([
    2,
    [
      'hmmlab: EINVAL: bad --replay-policy "sometimes": expected one of block, batch, batch-flush, once (NVIDIA UVM\'s fault replay policies)',
    ],
  ]);
});
