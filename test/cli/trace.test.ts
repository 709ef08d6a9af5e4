/**
 * `--trace PAGES` (replay and stress): one line on stderr per event that touches the traced pages,
 * in order, with the op line, the event, the page's state before and after in the scheme tables'
 * letters and the work done: Kara's and Glisse's state machines watched page by page, on the real
 * adapter. stdout stays what it is without --trace.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parsePageSet } from '../../src/mm/trace.ts';
import { hmmlab, ourStderr } from '../helpers/cli.ts';

/** One page's story: written, mapped, written by the device, read back, synced, dropped, stored to, cut. */
const LOG = [
  { op: 'write', off: 0, len: 16384, tag: 1 },
  { op: 'mapread', off: 0, len: 4 },
  { op: 'devwrite', off: 0, len: 8192, tag: 2 },
  { op: 'read', off: 4096, len: 100 },
  { op: 'fsync' },
  { op: 'dropcaches' },
  { op: 'devread', off: 0, len: 8192 },
  { op: 'mapwrite', off: 4100, len: 8, tag: 3 },
  { op: 'truncate', size: 4096 },
];

let dir: string;
let log: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hmmlab-trace-'));
  log = join(dir, 'story.jsonl');
  await writeFile(log, `${LOG.map((o) => JSON.stringify(o)).join('\n')}\n`);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const traced = (stderr: string) => ourStderr(stderr).filter((l) => l.startsWith('trace: '));
const args = (policy: string) => [
  'replay',
  log,
  '--json',
  '--check',
  '--policy',
  policy,
  '--host-pages',
  '8',
  '--device-pages',
  '8',
];

describe.each([
  [
    'mirror',
    [
      "line 1 oplog.dat page 1: cpu-write (A -, A' -, CPU -) -> (A D, A' -, CPU -): alloc-page, write",
      "line 2 oplog.dat page 1: fault-around (A D, A' -, CPU -) -> (A D, A' -, CPU ro)",
      "line 3 oplog.dat page 1: device-write-fault (A D, A' -, CPU ro) -> (A S, A' rw, CPU -): page_mkwrite, try_to_unmap, copy-to-device",
      "line 4 oplog.dat page 1: cpu-read (A S, A' rw, CPU -) -> (A D, A' ro, CPU -): device-protect, copy-back",
      "line 5 oplog.dat page 1: writeback (A D, A' ro, CPU -) -> (A C, A' ro, CPU -): page_mkclean, writepage",
      "line 6 oplog.dat page 1: drop_caches (A C, A' ro, CPU -) -> (A E, A' ro, CPU -): device-entry",
      "line 8 oplog.dat page 1: cpu-read (A E, A' ro, CPU -) -> (A C, A' ro, CPU -): alloc-page, copy-back",
      "line 8 oplog.dat page 1: cpu-write-fault (A C, A' ro, CPU -) -> (A D, A' -, CPU -): device-revoke",
      "line 8 oplog.dat page 1: cpu-write-fault (A D, A' -, CPU -) -> (A D, A' -, CPU rw): page_mkwrite",
      "line 9 oplog.dat page 1: invalidate (A D, A' -, CPU rw) -> (A -, A' -, CPU -): try_to_unmap, drop-page",
    ],
  ],
  [
    'migrate',
    [
      "line 1 oplog.dat page 1: cpu-write (A -, A' -, CPU -) -> (A D, A' -, CPU -): alloc-page, write",
      "line 2 oplog.dat page 1: fault-around (A D, A' -, CPU -) -> (A D, A' -, CPU ro)",
      "line 3 oplog.dat page 1: device-write-fault (A D, A' -, CPU ro) -> (A E, A' rw, CPU -): page_mkwrite, try_to_unmap, copy-to-device, device-entry",
      "line 4 oplog.dat page 1: cpu-read (A E, A' rw, CPU -) -> (A E, A' rw, CPU -): bounce-read",
      "line 5 oplog.dat page 1: writeback (A E, A' rw, CPU -) -> (A E, A' ro, CPU -): device-protect, bounce-writeback",
      "line 8 oplog.dat page 1: cpu-read-fault (A E, A' ro, CPU -) -> (A C, A' -, CPU -): alloc-page, copy-back, device-revoke",
      "line 8 oplog.dat page 1: cpu-write-fault (A C, A' -, CPU -) -> (A D, A' -, CPU rw): page_mkwrite",
      "line 9 oplog.dat page 1: invalidate (A D, A' -, CPU rw) -> (A -, A' -, CPU -): try_to_unmap, drop-page",
    ],
  ],
])('replay --trace under %s', (policy, want) => {
  it("prints page 1's every event in order, and stdout is what it is without --trace", async () => {
    const plain = await hmmlab(args(policy));
    const r = await hmmlab([...args(policy), '--trace', '1']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(plain.stdout);
    expect(traced(r.stderr)).toEqual(want.map((l) => `trace: ${l}`));
    expect(traced(plain.stderr)).toEqual([]);
  });
});

it('a page nothing touches traces nothing; ranges and open ranges select pages', async () => {
  const none = await hmmlab([...args('mirror'), '--trace', '9']);
  expect(traced(none.stderr)).toEqual([]);
  const both = await hmmlab([...args('mirror'), '--trace', '0-']);
  const pages = new Set(traced(both.stderr).map((l) => /page (\d+):/.exec(l)![1]));
  expect([...pages].sort()).toEqual(['0', '1', '2', '3']);
  expect(parsePageSet('0-3,7,100-')).toEqual([
    [0, 3],
    [7, 7],
    [100, Number.MAX_SAFE_INTEGER],
  ]);
});

it('a bad --trace is one EINVAL line naming it, exit 2', async () => {
  const r = await hmmlab(['replay', log, '--trace', '3-1']);
  expect(r.code).toBe(2);
  expect(ourStderr(r.stderr)).toEqual([
    expect.stringMatching(/^hmmlab: EINVAL: bad --trace "3-1": range "3-1" is empty$/),
  ]);
});

it('stress --trace names each event with its seed and line', async () => {
  const r = await hmmlab(['stress', '--ops', '60', '--seed', '3', '--trace', '2']);
  expect(r.code, r.stderr).toBe(0);
  const lines = traced(r.stderr);
  expect(lines.length).toBeGreaterThan(2);
  for (const l of lines)
    expect(l).toMatch(
      /^trace: seed 3 line \d+ oplog\.dat page 2: [\w-]+ \(A [-CDSE], A' (-|ro|rw), CPU (-|ro|rw)\) -> /,
    );
});
