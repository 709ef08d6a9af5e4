/**
 * The replay runner on HmmFs: docs/oplog.md's output (a record per read-like op, the end line last
 * with the sha256 of the backing file on disk), check mode catching a difference, device ops
 * refused before anything runs, and a filesystem error that stops the run with nothing lost.
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, writeSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { HmmlabError } from '../../src/errors.ts';
import { generateOplog } from '../../src/oplog/generate.ts';
import { modelOplog } from '../../src/oplog/model.ts';
import { patternBytes } from '../../src/oplog/pattern.ts';
import { ReplayMismatch, type ReplayRecord, replayOplog } from '../../src/oplog/replay.ts';
import type { Op } from '../../src/oplog/schema.ts';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hmmlab-oplog-test-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('replay output (oplog.md)', () => {
  test('a record per read-like op with the bytes returned, then the end line with the disk file', async () => {
    const ops: Op[] = [
      { op: 'write', off: 100, len: 5000, tag: 1 },
      { op: 'read', off: 0, len: 200 },
      { op: 'mapwrite', off: 9000, len: 100, tag: 2 },
      { op: 'mapread', off: 8000, len: 5000 },
      { op: 'fsync' },
      { op: 'dioread', off: 8704, len: 1024 },
      { op: 'read', off: 20000, len: 10 },
      { op: 'truncate', size: 3000 },
      { op: 'remount' },
      { op: 'read', off: 2990, len: 100 },
    ];
    const records: ReplayRecord[] = [];
    const r = await replayOplog(ops, { dir, onRecord: (x) => records.push(x) });
    const { reads, file } = modelOplog(ops);
    const want = reads.flatMap((b, i) => (b ? [{ i, op: ops[i].op, len: b.length, sha256: sha(b) }] : []));
    expect(r.reads).toEqual(want);
    expect(want.map((x) => x.len)).toEqual([200, 1100, 396, 0, 10]);
    expect(records.at(-1)).toEqual({ op: 'end', size: 3000, sha256: sha(file) });
    expect(records.slice(0, -1)).toEqual(want);
    // The end line hashes the backing file as it lies on disk.
    const disk = await readFile(join(dir, 'oplog.dat'));
    expect(r.end).toEqual({ op: 'end', size: disk.length, sha256: sha(disk) });
  });

  test('`i` is the 0-based line index given by lines[]', async () => {
    const ops: Op[] = [
      { op: 'write', off: 0, len: 10, tag: 1 },
      { op: 'read', off: 0, len: 10 },
    ];
    const r = await replayOplog(ops, { lines: [1, 5] });
    expect(r.reads[0].i).toBe(4);
  });

  test('the file starts empty even when the backing file exists', async () => {
    await writeFile(join(dir, 'oplog.dat'), new Uint8Array(10000).fill(7));
    const r = await replayOplog([{ op: 'read', off: 0, len: 100 }], { dir });
    expect(r.reads[0].len).toBe(0);
    expect(r.end.size).toBe(0);
  });
});

describe('check mode', () => {
  test('a generated log under a small host-page budget matches the model, reads and disk', async () => {
    const ops = generateOplog({ seed: 11, ops: 600, maxFileSize: 96 * 1024 });
    const r = await replayOplog(ops, { hostPages: 6, check: true });
    expect(r.ops).toBe(600);
    expect(r.diskChecks).toBeGreaterThan(5);
    expect(r.end.sha256).toBe(sha(modelOplog(ops).file));
  });

  test('a byte changed on disk behind the page cache is reported with its line, op and offset', async () => {
    const ops: Op[] = [
      { op: 'write', off: 0, len: 8192, tag: 1 },
      { op: 'fsync' },
      { op: 'read', off: 0, len: 10 },
      { op: 'dropcaches' },
      { op: 'read', off: 4096, len: 4096 },
    ];
    let corrupted = false;
    const run = replayOplog(ops, {
      dir,
      check: true,
      onRecord: (rec) => {
        if (rec.op === 'read' && !corrupted) {
          corrupted = true;
          // Another writer changes the disk file: the next read after dropcaches must see it.
          const b = patternBytes(5000, 1, 1);
          b[0] ^= 0xff;
          const fd = openSync(join(dir, 'oplog.dat'), 'r+');
          writeSync(fd, b, 0, 1, 5000);
          closeSync(fd);
        }
      },
    });
    await expect(run).rejects.toBeInstanceOf(ReplayMismatch);
    const e = (await run.catch((x) => x)) as ReplayMismatch;
    expect(e.line).toBe(5);
    expect(e.offset).toBe(5000);
    expect(e.message).toMatch(
      /^line 5 \(read off=4096 len=4096\): returned: 4096 bytes, model 4096; first difference at file offset 5000/,
    );
  });
});

describe('streamed in chunks (streamChunk 8 KiB)', () => {
  const ops: Op[] = [
    { op: 'write', off: 100, len: 65_536, tag: 1 }, // 9 calls: cut at multiples of 8 KiB
    { op: 'fsync' },
    { op: 'dropcaches' },
    { op: 'read', off: 0, len: 1 << 30 }, // short at EOF, after 9 calls
    { op: 'mapread', off: 10, len: 50_000 },
    { op: 'dioread', off: 8192, len: 65_536 },
    { op: 'fsync' },
  ];
  const corrupt = (at: number) => {
    const b = patternBytes(at, 1, 1);
    b[0] ^= 0xff;
    const fd = openSync(join(dir, 'oplog.dat'), 'r+');
    writeSync(fd, b, 0, 1, at);
    closeSync(fd);
  };

  test('the records of the whole-buffer replay', async () => {
    const whole = await replayOplog(ops, { dir, check: true });
    const streamed = await replayOplog(ops, { dir, check: true, streamChunk: 8192 });
    expect(streamed.reads).toEqual(whole.reads);
    expect(streamed.end).toEqual(whole.end);
    expect(streamed.reads.map((r) => r.len)).toEqual([65_636, 50_000, 57_444]);
  });

  test('a difference in a later chunk of a read names its file offset', async () => {
    const run = replayOplog(ops, {
      dir,
      check: true,
      streamChunk: 8192,
      afterOp: (_fs, line) => {
        if (line === 3) corrupt(40_001); // behind the cache's back, after dropcaches
      },
    });
    const e = (await run.catch((x) => x)) as ReplayMismatch;
    expect(e).toBeInstanceOf(ReplayMismatch);
    expect(e.offset).toBe(40_001);
    expect(e.message).toMatch(
      /^line 4 \(read off=0 len=1073741824\): returned: 65636 bytes, model 65636; first difference at file offset 40001 /,
    );
  });

  test('a difference on disk is found by the streamed disk check', async () => {
    const run = replayOplog(ops, {
      dir,
      check: true,
      streamChunk: 8192,
      afterOp: (_fs, line) => {
        if (line === 6) corrupt(60_000);
      },
    });
    const e = (await run.catch((x) => x)) as ReplayMismatch;
    expect(e.message).toMatch(
      /^line 7 \(fsync\): backing file on disk: 65636 bytes, model 65636; first difference at file offset 60000 /,
    );
  });
});

test('device ops are refused before anything runs, naming the line', async () => {
  const ops: Op[] = [
    { op: 'write', off: 0, len: 64, tag: 1 },
    { op: 'devwrite', off: 0, len: 16, tag: 2 },
  ];
  const e = await replayOplog(ops, { dir }).catch((x) => x);
  expect(e).toBeInstanceOf(HmmlabError);
  expect(e.code).toBe('ENODEV');
  expect(e.message).toBe('line 2: devwrite needs a device: replay with a device policy (mirror or migrate)');
  expect((await readFile(join(dir, 'oplog.dat')).catch(() => new Uint8Array(0))).length).toBe(0);
});

test('an invalid op is refused before the disk is touched', async () => {
  const ops = [
    { op: 'write', off: 0, len: 64, tag: 1 },
    { op: 'dioread', off: 3, len: 512 },
  ] as Op[];
  await expect(replayOplog(ops, { dir })).rejects.toThrow(/^line 2: dioread: off 3 is not a multiple of 512/);
  await expect(readFile(join(dir, 'oplog.dat'))).rejects.toThrow(/ENOENT/);
});

test('ENOSPC stops the run at its line; what was written before is on disk', async () => {
  const ops: Op[] = [
    { op: 'write', off: 0, len: 4096, tag: 1 },
    { op: 'fsync' },
    { op: 'write', off: 4096, len: 100, tag: 2 }, // dirty, never fsynced: the unmount must write it
    { op: 'write', off: 8192, len: 4096, tag: 3 }, // a third block: over the budget
    { op: 'write', off: 0, len: 10, tag: 4 },
  ];
  const e = await replayOplog(ops, { dir, blocks: 2 }).catch((x) => x);
  expect(e).toBeInstanceOf(HmmlabError);
  expect(e.code).toBe('ENOSPC');
  expect(e.message).toMatch(/^line 4 \(write off=8192 len=4096 tag=3\): /);
  const disk = await readFile(join(dir, 'oplog.dat'));
  expect(new Uint8Array(disk)).toEqual(modelOplog(ops.slice(0, 3)).file);
});

test.each(['write', 'mapwrite', 'diowrite'] as const)(
  'a %s of 2^40 bytes is EFBIG at its line while the log is checked, before the disk is touched',
  async (name) => {
    const ops: Op[] = [
      { op: 'write', off: 0, len: 100, tag: 1 },
      { op: name, off: 0, len: 2 ** 40, tag: 2 },
    ];
    const e = await replayOplog(ops, { dir, check: true }).catch((x) => x);
    expect(e).toBeInstanceOf(HmmlabError);
    expect(e.code).toBe('EFBIG');
    expect(e.message).toBe(
      `line 2 (${name} off=0 len=${2 ** 40} tag=2): ${name} at offset 0 length ${2 ** 40} ` +
        `ends at ${2 ** 40}, past the file-size limit ${2 ** 30}`,
    );
    expect(existsSync(join(dir, 'oplog.dat'))).toBe(false);
  },
);
