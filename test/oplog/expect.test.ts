/**
 * `"expect":"CODE"` (oplog.md): an op that says it fails with CODE must fail with exactly that code,
 * and the replay goes on; in check mode the reference model stays exact after it. Real logs hit
 * each case on real files (a --blocks budget makes write(2), direct I/O and page_mkwrite refuse;
 * the GPU's device write is refused page by page), and the file is compared with bytes computed
 * here by hand. Also: a mismatch names the line, what was expected and what happened; with --json
 * an expected failure prints nothing extra.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { openPolicy, type PolicyHost } from '../../src/cli/policy.ts';
import { HmmlabError } from '../../src/errors.ts';
import type { GpuDevice } from '../../src/gpu/device.ts';
import { landedRanges } from '../../src/oplog/expect.ts';
import { parseOplog } from '../../src/oplog/parse.ts';
import { patternBytes } from '../../src/oplog/pattern.ts';
import { replayOplog } from '../../src/oplog/replay.ts';
import type { Op } from '../../src/oplog/schema.ts';
import { hmmlab, ourStderr } from '../helpers/cli.ts';
import { openGpu } from '../policy/helpers.ts';

const PS = 4096;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let dir: string;
let gpu: GpuDevice;
let host: PolicyHost;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hmmlab-expect-'));
  gpu = await openGpu();
  host = await openPolicy('mirror', { gpu, devicePages: 16, pageSize: PS, batch: 256 });
});
afterAll(async () => {
  host?.close();
  if (gpu && !gpu.lost) gpu.destroy();
  await rm(dir, { recursive: true, force: true });
});

/** Replay `text` in check mode on a fresh mount with `blocks`; the file on disk after it. */
async function replayChecked(text: string, blocks: number, device = false): Promise<Uint8Array> {
  const sub = await mkdtemp(join(dir, 'run-'));
  const mount = device ? await host.forMount() : null;
  try {
    const log = parseOplog(text);
    await replayOplog(log.ops, { dir: sub, blocks, check: true, lines: log.lines, policy: mount?.policy });
    return new Uint8Array(await readFile(join(sub, 'oplog.dat')));
  } finally {
    mount?.close();
  }
}

/** The bytes of a file of `size` with the given pattern ranges [off, end, tag], later ones on top. */
function file(size: number, ...ranges: [number, number, number][]): Uint8Array {
  const b = new Uint8Array(size);
  for (const [off, end, tag] of ranges) b.set(patternBytes(off, end - off, tag), off);
  return b;
}

const lines = (...ops: object[]) => `${ops.map((o) => JSON.stringify(o)).join('\n')}\n`;

describe('an expected failure leaves exactly what the kernel would, and the model follows', () => {
  test('write(2) and diowrite that ENOSPC refuses wrote nothing (blocks are reserved first)', async () => {
    const text = lines(
      { op: 'write', off: 0, len: 8192, tag: 1 },
      { op: 'write', off: 6000, len: 4000, tag: 2, expect: 'ENOSPC' }, // needs page 2: none left
      { op: 'diowrite', off: 8192, len: 512, tag: 3, expect: 'ENOSPC' },
      { op: 'read', off: 0, len: 10000 },
      { op: 'write', off: 100, len: 50, tag: 4 }, // the run goes on
      { op: 'fsync' },
    );
    expect(await replayChecked(text, 2)).toEqual(file(8192, [0, 8192, 1], [100, 150, 4]));
  });

  test('a mapwrite that page_mkwrite refuses stored the pages before the refused one (the file extended first)', async () => {
    const text = lines(
      { op: 'write', off: 0, len: 8192, tag: 1 },
      // pages 0 and 1 have blocks; page 2 needs one and none is left: SIGBUS there.
      { op: 'mapwrite', off: 4000, len: 10000, tag: 5, expect: 'ENOSPC' },
      { op: 'mapread', off: 0, len: 20000 },
      { op: 'remount' },
    );
    expect(await replayChecked(text, 2)).toEqual(file(14000, [0, 8192, 1], [4000, 8192, 5]));
  });

  test('EFBIG is expected before anything: nothing written, nothing extended', async () => {
    const text = lines(
      { op: 'write', off: 0, len: 100, tag: 1 },
      { op: 'write', off: 2 ** 30 - 10, len: 20, tag: 2, expect: 'EFBIG' },
      { op: 'mapwrite', off: 2 ** 30, len: 1, tag: 3, expect: 'EFBIG' },
      { op: 'diowrite', off: 2 ** 30, len: 512, tag: 4, expect: 'EFBIG' },
      { op: 'truncate', size: 2 ** 30 + 1, expect: 'EFBIG' },
    );
    expect(await replayChecked(text, 1000)).toEqual(file(100, [0, 100, 1]));
  });

  test('a device write refused by page_mkwrite (EFAULT, SIGBUS) landed on every other page', async () => {
    const text = lines(
      { op: 'write', off: 0, len: 8192, tag: 1 },
      { op: 'truncate', size: 4 * PS }, // pages 2 and 3 have no block
      // 3 blocks: one of pages 2, 3 gets the last block, the other is refused.
      { op: 'devwrite', off: 100, len: 16000, tag: 2, expect: 'EFAULT' },
      { op: 'devread', off: 0, len: 4 * PS },
      { op: 'read', off: 0, len: 4 * PS },
      { op: 'fsync' },
    );
    const disk = await replayChecked(text, 3, true);
    // Which page was refused is the device's order; the model followed the error's page list.
    const page = (i: number) => disk.subarray(i * PS, (i + 1) * PS);
    const landed = file(4 * PS, [0, 8192, 1], [100, 16100, 2]);
    const kept = file(4 * PS, [0, 8192, 1]);
    const refused = [2, 3].filter((i) => sha(page(i)) === sha(kept.subarray(i * PS, (i + 1) * PS)));
    expect(refused).toHaveLength(1);
    for (const i of [0, 1, 2, 3].filter((x) => !refused.includes(x))) {
      expect(sha(page(i))).toBe(sha(landed.subarray(i * PS, (i + 1) * PS)));
    }
  });
});

describe('what is not the expected failure stops the run with EEXPECT', () => {
  test('an op that succeeds', async () => {
    const ops: Op[] = [{ op: 'write', off: 0, len: 10, tag: 1, expect: 'ENOSPC' }];
    const e = await replayOplog(ops, { check: true }).catch((x) => x);
    expect(e).toBeInstanceOf(HmmlabError);
    expect(e.code).toBe('EEXPECT');
    expect(e.message).toBe(
      'line 1 (write off=0 len=10 tag=1 expect=ENOSPC): expected ENOSPC, but the op succeeded',
    );
  });

  test('an op that fails with another code', async () => {
    const ops: Op[] = [{ op: 'write', off: 0, len: 10, tag: 1, expect: 'EFBIG' }];
    const e = await replayOplog(ops, { blocks: 0 }).catch((x) => x);
    expect(e.code).toBe('EEXPECT');
    expect(e.message).toMatch(
      /^line 1 \(write off=0 len=10 tag=1 expect=EFBIG\): expected EFBIG, got ENOSPC: write of pages 0\.\.0 needs 1 new block/,
    );
  });

  test('an op past the file-size limit that expects another code is EFBIG when the log is checked', async () => {
    const e = await replayOplog([{ op: 'truncate', size: 2 ** 30 + 1, expect: 'EIO' }], { dir }).catch(
      (x) => x,
    );
    expect(e.code).toBe('EFBIG');
    expect(e.message).toMatch(/^line 1 \(truncate size=1073741825 expect=EIO\): truncate at offset 0 /);
  });
});

test('a long write applied in several calls fails whole with ENOSPC, as one write(2) does', async () => {
  // streamChunk of 2 pages: the 6-page write is three calls; replay reserves all 6 pages' blocks
  // first (fallocate), so with 3 blocks it fails before a byte lands.
  const sub = await mkdtemp(join(dir, 'run-'));
  const log = parseOplog(
    lines(
      { op: 'write', off: 0, len: 6 * PS, tag: 3, expect: 'ENOSPC' },
      { op: 'read', off: 0, len: 6 * PS },
      { op: 'fsync' },
    ),
  );
  const r = await replayOplog(log.ops, {
    dir: sub,
    blocks: 3,
    check: true,
    streamChunk: 2 * PS,
    lines: log.lines,
  });
  expect(r.reads[0].len).toBe(0);
  expect(r.end.size).toBe(0);
});

test('landedRanges takes the refused pages the errors carry as data, through the line wrapper', () => {
  const refused = new HmmlabError('EFAULT', 'SIGBUS: device write to pages 1, 3 of oplog.dat refused', {
    pages: [1, 3],
  });
  const dev = new HmmlabError('EFAULT', `line 3 (devwrite off=100 len=16000 tag=2): ${refused.message}`, {
    cause: refused,
  });
  expect(landedRanges({ op: 'devwrite', off: 100, len: 16000, tag: 2 }, dev, PS)).toEqual([
    [100, 4096],
    [8192, 12288],
  ]);
  const map = new HmmlabError(
    'ENOSPC',
    'page_mkwrite refused page 2 of oplog.dat (offset 8192): no (SIGBUS)',
    {
      pages: [2],
    },
  );
  expect(landedRanges({ op: 'mapwrite', off: 4000, len: 10000, tag: 1 }, map, PS)).toEqual([[4000, 8192]]);
  expect(landedRanges({ op: 'mapwrite', off: 9000, len: 10, tag: 1 }, map, PS)).toEqual([]);
  // Without the pages as data the model cannot follow: the checked replay stops.
  expect(
    landedRanges({ op: 'mapwrite', off: 0, len: 10, tag: 1 }, new HmmlabError('ENOSPC', 'x'), PS),
  ).toBeNull();
  expect(landedRanges({ op: 'punch', off: 0, len: 1 }, new HmmlabError('EIO', 'x'), PS)).toBeNull();
});

test('with --json an expected failure prints nothing extra; a mismatch exits 1 naming the line', async () => {
  const path = join(dir, 'enospc.jsonl');
  await writeFile(
    path,
    lines(
      { op: 'write', off: 0, len: 4096, tag: 1 },
      { op: 'write', off: 4096, len: 10, tag: 2, expect: 'ENOSPC' },
      { op: 'read', off: 0, len: 5000 },
    ),
  );
  const r = await hmmlab(['replay', path, '--json', '--check', '--blocks', '1']);
  expect(r.code, r.stderr).toBe(0);
  expect(ourStderr(r.stderr)).toEqual([]);
  const out = r.stdout
    .trimEnd()
    .split('\n')
    .map((l) => JSON.parse(l));
  expect(out).toEqual([
    { i: 2, op: 'read', len: 4096, sha256: sha(patternBytes(0, 4096, 1)) },
    { op: 'end', size: 4096, sha256: sha(patternBytes(0, 4096, 1)) },
  ]);
  const bad = await hmmlab(['replay', path, '--json', '--blocks', '2']);
  expect(bad.code).toBe(1);
  expect(ourStderr(bad.stderr)).toEqual([
    'hmmlab: EEXPECT: line 2 (write off=4096 len=10 tag=2 expect=ENOSPC): expected ENOSPC, but the op succeeded',
  ]);
});
