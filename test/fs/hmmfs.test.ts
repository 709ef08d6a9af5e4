/**
 * HmmFs over real files: read/write, fsync, truncate, punch hole, direct I/O, unmount/remount, block
 * budget (ENOSPC) and bad input (EINVAL, EFBIG, EBADF), each on real backing files in a temp dir,
 * for page sizes 4 KiB and 64 KiB where the page size matters.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { HmmlabError } from '../../src/errors.ts';
import { HmmFs } from '../../src/fs/hmmfs.ts';
import { diskBytes, equalBytes, type Lab, mountLab, pattern } from './helpers.ts';

let lab: Lab | undefined;
afterEach(async () => {
  await lab?.cleanup();
  lab = undefined;
});

async function expectErr(p: Promise<unknown> | (() => unknown), code: string, msg?: RegExp): Promise<void> {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(HmmlabError);
  expect((err as HmmlabError).code).toBe(code);
  if (msg) expect((err as HmmlabError).message).toMatch(msg);
}

describe.each([4096, 65536])('page size %i', (pageSize) => {
  it('write then read returns the bytes, a gap reads as zeros, a read is short at EOF', async () => {
    lab = await mountLab({ pageSize, hostPages: 64 });
    const f = await lab.fs.open('a', { create: true });
    await f.write(10, pattern(10, 3 * pageSize, 1));
    await f.write(5 * pageSize + 7, pattern(5 * pageSize + 7, 100, 2));
    expect(f.size).toBe(5 * pageSize + 107);
    expect(equalBytes(await f.read(10, 3 * pageSize), pattern(10, 3 * pageSize, 1))).toBe(true);
    const gap = await f.read(3 * pageSize + 10, pageSize);
    expect(gap.every((b) => b === 0)).toBe(true);
    const tail = await f.read(5 * pageSize + 7, 1000);
    expect(equalBytes(tail, pattern(5 * pageSize + 7, 100, 2))).toBe(true);
    expect((await f.read(f.size + 5, 10)).length).toBe(0);
  });

  it('fsync puts every written byte in the backing file', async () => {
    lab = await mountLab({ pageSize, hostPages: 64 });
    const f = await lab.fs.open('a', { create: true });
    const data = pattern(0, 2 * pageSize + 33, 3);
    await f.write(0, data);
    expect(diskBytes(lab.dir, 'a').some((b) => b !== 0)).toBe(false); // still only in the cache
    await f.fsync();
    expect(equalBytes(diskBytes(lab.dir, 'a'), data)).toBe(true);
    expect(lab.fs.vmstat().nr_dirty).toBe(0);
    expect(lab.fs.vmstat().nr_written).toBe(3);
  });

  it('truncate shrink zeroes the partial page tail and growing reads zeros', async () => {
    lab = await mountLab({ pageSize, hostPages: 64 });
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 3 * pageSize, 4));
    await f.truncate(100);
    expect(f.size).toBe(100);
    expect(lab.fs.snapshot('a', 0, 2).map((r) => r.host)).toEqual(['D', '-', '-']);
    await f.truncate(3 * pageSize);
    const back = await f.read(0, 3 * pageSize);
    expect(equalBytes(back.subarray(0, 100), pattern(0, 100, 4))).toBe(true);
    expect(back.subarray(100).every((b) => b === 0)).toBe(true);
    await f.fsync();
    expect(equalBytes(diskBytes(lab.dir, 'a'), back)).toBe(true);
  });

  it('punch hole reads as zeros, keeps the size and frees whole blocks', async () => {
    lab = await mountLab({ pageSize, hostPages: 64 });
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 4 * pageSize, 5));
    await f.fsync();
    expect(lab.fs.blocksUsed).toBe(4);
    await f.punchHole(pageSize / 2, 2 * pageSize); // half of page 0, page 1 whole, half of page 2
    expect(f.size).toBe(4 * pageSize);
    expect(lab.fs.blocksUsed).toBe(3);
    const want = pattern(0, 4 * pageSize, 5);
    want.fill(0, pageSize / 2, pageSize / 2 + 2 * pageSize);
    expect(equalBytes(await f.read(0, 4 * pageSize), want)).toBe(true);
    await f.fsync();
    expect(equalBytes(diskBytes(lab.dir, 'a'), want)).toBe(true);
  });

  it('remount keeps the data and closes old handles', async () => {
    lab = await mountLab({ pageSize, hostPages: 16 });
    const f = await lab.fs.open('a', { create: true });
    await f.write(3, pattern(3, 5 * pageSize, 6));
    await lab.fs.remount();
    await expectErr(f.read(0, 1), 'EBADF', /closed/);
    const g = await lab.fs.open('a');
    expect(g.size).toBe(5 * pageSize + 3);
    expect(equalBytes(await g.read(3, 5 * pageSize), pattern(3, 5 * pageSize, 6))).toBe(true);
  });
});

describe('unmount and mount', () => {
  it('unmount writes back and drops every page; a new mount of the directory sees the data', async () => {
    lab = await mountLab({ hostPages: 16 });
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 20000, 7));
    const vma = f.mmap();
    await vma.store(5000, pattern(5000, 10, 8));
    await lab.fs.unmount();
    expect(lab.fs.vmstat().nr_file_pages).toBe(0);
    await expectErr(vma.load(0, 1), 'EBADF');
    const want = pattern(0, 20000, 7);
    want.set(pattern(5000, 10, 8), 5000);
    expect(equalBytes(diskBytes(lab.dir, 'a'), want)).toBe(true);
    const again = await HmmFs.mount({ dir: lab.dir });
    const g = await again.open('a');
    expect(equalBytes(await g.read(0, 20000), want)).toBe(true);
    await again.unmount();
  });

  it('mount of a default directory makes a fresh temp dir', async () => {
    const hfs = await HmmFs.mount();
    lab = {
      fs: hfs,
      dir: hfs.dir,
      cleanup: async () => {
        await hfs.unmount();
        fs.rmSync(hfs.dir, { recursive: true, force: true });
      },
    };
    expect(path.dirname(hfs.dir)).toBe(os.tmpdir());
    const f = await hfs.open('x', { create: true });
    await f.write(0, new Uint8Array([9]));
    await f.fsync();
    expect(diskBytes(hfs.dir, 'x')[0]).toBe(9);
  });
});

describe('direct I/O', () => {
  it('misaligned offsets and lengths are EINVAL and change nothing', async () => {
    lab = await mountLab();
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 4096, 1));
    await expectErr(f.readDirect(100, 512), 'EINVAL', /offset 100/);
    await expectErr(f.readDirect(0, 513), 'EINVAL', /length 513/);
    await expectErr(f.writeDirect(512, new Uint8Array(100)), 'EINVAL', /length 100/);
    expect(equalBytes(await f.read(0, 4096), pattern(0, 4096, 1))).toBe(true);
  });

  it('a direct read sees dirty cached data (written back first)', async () => {
    lab = await mountLab();
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 8192, 2));
    const got = await f.readDirect(512, 4096);
    expect(equalBytes(got, pattern(512, 4096, 2))).toBe(true);
    expect(lab.fs.vmstat().dio_pages_written_back).toBe(2);
    expect((await f.readDirect(8192, 512)).length).toBe(0); // short at EOF
  });

  it('a direct write invalidates the cached pages of its range', async () => {
    lab = await mountLab();
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 3 * 4096, 3));
    await f.read(0, 3 * 4096);
    const vma = f.mmap();
    await vma.load(4096, 10);
    await f.writeDirect(4096, pattern(4096, 512, 9));
    expect(lab.fs.snapshot('a', 0, 2).map((r) => r.host)).toEqual(['D', '-', 'D']);
    const want = pattern(0, 3 * 4096, 3);
    want.set(pattern(4096, 512, 9), 4096);
    expect(equalBytes(await f.read(0, 3 * 4096), want)).toBe(true);
    expect(equalBytes(await vma.load(4096, 512), pattern(4096, 512, 9))).toBe(true);
    await f.writeDirect(16384, pattern(16384, 1024, 4)); // extends the file
    expect(f.size).toBe(16384 + 1024);
  });
});

describe('block budget', () => {
  it('a write that needs blocks past the budget is ENOSPC and writes nothing', async () => {
    lab = await mountLab({ blocks: 3 });
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 2 * 4096, 1));
    await expectErr(f.write(4096, pattern(4096, 3 * 4096, 2)), 'ENOSPC', /new block/);
    expect(f.size).toBe(2 * 4096);
    expect(equalBytes(await f.read(0, 2 * 4096), pattern(0, 2 * 4096, 1))).toBe(true);
    await f.write(2 * 4096, pattern(2 * 4096, 4096, 3)); // the last block still fits
    await f.truncate(4096); // frees two blocks
    expect(lab.fs.blocksUsed).toBe(1);
    await f.write(4096, pattern(4096, 2 * 4096, 4));
    await f.fsync();
    const want = new Uint8Array(3 * 4096);
    want.set(pattern(0, 4096, 1));
    want.set(pattern(4096, 2 * 4096, 4), 4096);
    expect(equalBytes(diskBytes(lab.dir, 'a'), want)).toBe(true);
  });
});

describe('bad input', () => {
  it('negative or non-integer offsets and lengths are EINVAL naming the argument', async () => {
    lab = await mountLab();
    const f = await lab.fs.open('a', { create: true });
    await expectErr(f.read(-1, 10), 'EINVAL', /read offset must be a non-negative integer, got -1/);
    await expectErr(f.read(0, 1.5), 'EINVAL', /read length .* got 1.5/);
    await expectErr(f.write(Number.NaN, new Uint8Array(1)), 'EINVAL', /write offset/);
    await expectErr(f.truncate(-4), 'EINVAL', /truncate size/);
    await expectErr(f.punchHole(0, -1), 'EINVAL', /punch length/);
  });

  it('sizes past the file-size limit are EFBIG and nothing is lost', async () => {
    lab = await mountLab({ maxFileSize: 1 << 20 });
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 100, 1));
    await expectErr(f.write((1 << 20) - 10, new Uint8Array(11)), 'EFBIG', /past the file-size limit 1048576/);
    await expectErr(f.truncate((1 << 20) + 1), 'EFBIG');
    expect(equalBytes(await f.read(0, 1000), pattern(0, 100, 1))).toBe(true);
  });

  it('a closed file is EBADF', async () => {
    lab = await mountLab();
    const f = await lab.fs.open('a', { create: true });
    await f.close();
    await expectErr(f.read(0, 1), 'EBADF', /read on a: the file is closed/);
    await expectErr(() => f.mmap(), 'EBADF');
  });

  it('a page size that is not a power of two from 4 KiB to 2 MiB is EINVAL', async () => {
    for (const pageSize of [0, 2048, 12288, 4 << 20]) {
      await expectErr(HmmFs.mount({ pageSize }), 'EINVAL', new RegExp(`got ${pageSize}`));
    }
    await expectErr(HmmFs.mount({ hostPages: 0 }), 'EINVAL', /hostPages/);
  });

  it('opening a missing file without create is ENOENT', async () => {
    lab = await mountLab();
    await expectErr(lab.fs.open('nope'), 'ENOENT', /nope/);
    await expectErr(lab.fs.open('../x', { create: true }), 'EINVAL');
  });
});
