/**
 * The page cache (src/mm) through HmmFs on real files: mmap read faults with fault-around, write
 * faults with page_mkwrite (and ENOSPC), readahead window growth and reset, writeback and
 * page_mkclean, reclaim under tiny host-page budgets, dropcaches, snapshots and the shared page pool.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { HmmlabError } from '../../src/errors.ts';
import { get_init_ra_size, get_next_ra_size, ra_max, vma_pte_access } from '../../src/mm/index.ts';
import { diskBytes, equalBytes, type Lab, mountLab, pattern } from '../fs/helpers.ts';

let lab: Lab | undefined;
afterEach(async () => {
  await lab?.cleanup();
  lab = undefined;
});

const PS = 4096;

function delta(before: Record<string, number>, after: Record<string, number>, k: string): number {
  return (after[k] ?? 0) - (before[k] ?? 0);
}

describe('mmap faults', () => {
  it('a read fault maps the page read-only and fault-around maps resident neighbours', async () => {
    lab = await mountLab({ hostPages: 64 });
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 32 * PS, 1));
    await f.fsync();
    await lab.fs.dropCaches();
    await f.read(2 * PS, 4 * PS); // pages 2..5 resident (plus readahead)
    const resident = lab.fs
      .snapshot('a', 0, 31)
      .filter((r) => r.host !== '-')
      .map((r) => r.index);
    const vma = f.mmap();
    const before = lab.fs.vmstat();
    expect(equalBytes(await vma.load(3 * PS + 5, 100), pattern(3 * PS + 5, 100, 1))).toBe(true);
    const after = lab.fs.vmstat();
    expect(delta(before, after, 'pgfault')).toBe(1);
    expect(delta(before, after, 'pgmajfault')).toBe(0);
    // The fault-around window is 64 KiB (pages 0..15): every resident page in it is now mapped ro.
    const mapped = lab.fs
      .snapshot('a', 0, 31)
      .filter((r) => r.cpu === 'ro')
      .map((r) => r.index);
    expect(mapped).toEqual(resident.filter((i) => i < 16));
    expect(delta(before, after, 'fault_around_pages')).toBe(mapped.length - 1);
    expect(vma_pte_access(vma, 20)).toBe('-');
  });

  it('a read fault on an absent page is major and reads the disk', async () => {
    lab = await mountLab({ hostPages: 64 });
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 4 * PS, 2));
    await f.fsync();
    await lab.fs.dropCaches();
    const vma = f.mmap();
    expect(equalBytes(await vma.load(PS, PS), pattern(PS, PS, 2))).toBe(true);
    const s = lab.fs.vmstat();
    expect(s.pgmajfault).toBe(1);
    expect(s.pgpgin).toBeGreaterThanOrEqual(4);
  });

  it('a write fault calls page_mkwrite, maps the page writable and dirties it', async () => {
    lab = await mountLab({ hostPages: 64 });
    const f = await lab.fs.open('a', { create: true });
    await f.truncate(3 * PS);
    const vma = f.mmap();
    await vma.load(0, 3 * PS); // read faults: read-only PTEs
    expect(lab.fs.snapshot('a', 0, 2).map((r) => r.cpu)).toEqual(['ro', 'ro', 'ro']);
    await vma.store(PS + 10, pattern(PS + 10, 20, 3));
    const s = lab.fs.vmstat();
    expect(s.pgmkwrite).toBe(1);
    expect(lab.fs.snapshot('a', 1, 1)[0]).toMatchObject({ host: 'D', cpu: 'rw', mapcount: 1 });
    expect(lab.fs.blocksUsed).toBe(1);
    expect(equalBytes(await f.read(PS + 10, 20), pattern(PS + 10, 20, 3))).toBe(true);
  });

  it('writeback write-protects the mapping (page_mkclean) so the next store faults again', async () => {
    lab = await mountLab({ hostPages: 64 });
    const f = await lab.fs.open('a', { create: true });
    await f.truncate(PS);
    const vma = f.mmap();
    await vma.store(0, pattern(0, 8, 4));
    await f.fsync();
    expect(lab.fs.snapshot('a', 0, 0)[0]).toMatchObject({ host: 'C', cpu: 'ro' });
    expect(lab.fs.vmstat().pgmkclean).toBe(1);
    expect(equalBytes(diskBytes(lab.dir, 'a').subarray(0, 8), pattern(0, 8, 4))).toBe(true);
    await vma.store(8, pattern(8, 8, 5));
    expect(lab.fs.vmstat().pgmkwrite).toBe(2);
    expect(lab.fs.snapshot('a', 0, 0)[0]).toMatchObject({ host: 'D', cpu: 'rw' });
    await f.fsync();
    expect(equalBytes(diskBytes(lab.dir, 'a').subarray(8, 16), pattern(8, 8, 5))).toBe(true);
  });

  it('page_mkwrite past the block budget fails with ENOSPC and loses nothing stored before', async () => {
    lab = await mountLab({ hostPages: 64, blocks: 2 });
    const f = await lab.fs.open('a', { create: true });
    await f.truncate(4 * PS);
    const vma = f.mmap();
    await vma.store(0, pattern(0, 2 * PS, 6));
    let err: unknown;
    try {
      await vma.store(2 * PS, pattern(2 * PS, 10, 7));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(HmmlabError);
    expect((err as HmmlabError).code).toBe('ENOSPC');
    expect((err as HmmlabError).message).toMatch(/page_mkwrite refused page 2/);
    expect(lab.fs.snapshot('a', 2, 2)[0].cpu).not.toBe('rw');
    await f.fsync();
    const disk = diskBytes(lab.dir, 'a');
    expect(equalBytes(disk.subarray(0, 2 * PS), pattern(0, 2 * PS, 6))).toBe(true);
    expect(disk.subarray(2 * PS).every((b) => b === 0)).toBe(true);
  });

  it('truncate unmaps the pages past the new EOF; a store there is EFAULT', async () => {
    lab = await mountLab({ hostPages: 64 });
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 4 * PS, 8));
    const vma = f.mmap();
    await vma.load(0, 4 * PS);
    await f.truncate(PS + 100);
    expect([0, 1, 2, 3].map((i) => vma_pte_access(vma, i))).toEqual(['ro', 'ro', '-', '-']);
    const tail = await vma.load(PS, PS);
    expect(tail.length).toBe(100); // clamped to EOF
    let code = '';
    try {
      await vma.store(2 * PS, new Uint8Array(1));
    } catch (e) {
      code = (e as HmmlabError).code;
    }
    expect(code).toBe('EFAULT');
  });

  it('a mapping sees zeros after a punch hole', async () => {
    lab = await mountLab({ hostPages: 64 });
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 4 * PS, 9));
    const vma = f.mmap();
    expect(equalBytes(await vma.load(0, 4 * PS), pattern(0, 4 * PS, 9))).toBe(true);
    await f.punchHole(100, 2 * PS);
    const got = await vma.load(0, 4 * PS);
    const want = pattern(0, 4 * PS, 9);
    want.fill(0, 100, 100 + 2 * PS);
    expect(equalBytes(got, want)).toBe(true);
  });
});

describe('readahead', () => {
  it('sequential reads grow the window (4x, then 2x, up to read_ahead_kb)', async () => {
    lab = await mountLab({ hostPages: 1024 });
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 200 * PS, 1));
    await f.fsync();
    await lab.fs.dropCaches();
    const sizes: number[] = [];
    for (let i = 0; i < 200; i++) {
      const missed = lab.fs.snapshot('a', i, i)[0].host === '-';
      await f.read(i * PS, PS);
      if (missed) sizes.push(f.mapping.ra.size);
    }
    expect(sizes.slice(0, 4)).toEqual([4, 8, 16, 32]);
    expect(Math.max(...sizes)).toBe(32);
    expect(lab.fs.vmstat().pgra).toBe(200);
  });

  it('a random read resets the window and reads only what was asked', async () => {
    lab = await mountLab({ hostPages: 1024 });
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 200 * PS, 1));
    await f.fsync();
    await lab.fs.dropCaches();
    for (let i = 0; i < 20; i++) await f.read(i * PS, PS);
    expect(f.mapping.ra.size).toBeGreaterThan(4);
    const before = lab.fs.vmstat();
    await f.read(150 * PS, PS);
    const after = lab.fs.vmstat();
    expect(f.mapping.ra.size).toBe(0);
    expect(delta(before, after, 'ra_random')).toBe(1);
    expect(delta(before, after, 'pgra')).toBe(1);
    await f.read(151 * PS, PS); // sequential again: a fresh initial window
    expect(f.mapping.ra.size).toBe(4);
  });

  it('window sizes follow mm/readahead.c and are capped by half the host budget', () => {
    expect(get_init_ra_size(1, 32)).toBe(4);
    expect(get_init_ra_size(5, 32)).toBe(16);
    expect(get_next_ra_size(4, 32)).toBe(8);
    expect(get_next_ra_size(32, 32)).toBe(32);
    expect(get_next_ra_size(1, 32)).toBe(4);
  });
});

describe.each([4096, 65536])('reclaim, page size %i', (pageSize) => {
  it('a 4-page budget serves reads, writes and stores far larger, every byte intact', async () => {
    lab = await mountLab({ pageSize, hostPages: 4 });
    const f = await lab.fs.open('a', { create: true });
    const n = 24 * pageSize;
    await f.write(0, pattern(0, n, 1));
    const vma = f.mmap();
    await vma.store(3 * pageSize + 1, pattern(3 * pageSize + 1, 5 * pageSize, 2));
    const want = pattern(0, n, 1);
    want.set(pattern(3 * pageSize + 1, 5 * pageSize, 2), 3 * pageSize + 1);
    expect(equalBytes(await f.read(0, n), want)).toBe(true);
    expect(equalBytes(await vma.load(0, n), want)).toBe(true);
    const s = lab.fs.vmstat();
    expect(s.nr_file_pages).toBeLessThanOrEqual(4);
    expect(s.pgsteal_direct).toBeGreaterThan(20);
    expect(s.pgscan_direct).toBeGreaterThanOrEqual(s.pgsteal_direct);
    expect(s.nr_written).toBeGreaterThan(20); // dirty pages went out before they were freed
    await f.fsync();
    expect(equalBytes(diskBytes(lab.dir, 'a'), want)).toBe(true);
  });
});

describe('reclaim', () => {
  it('reclaim unmaps a mapped page before freeing it, and a refault reads it back', async () => {
    lab = await mountLab({ hostPages: 4 });
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 16 * PS, 3));
    await f.fsync();
    const vma = f.mmap();
    await vma.load(0, 10);
    expect(vma_pte_access(vma, 0)).toBe('ro');
    await f.read(4 * PS, 12 * PS); // pushes page 0 out
    expect(vma_pte_access(vma, 0)).toBe('-');
    const s0 = lab.fs.vmstat();
    expect(s0.pgunmap).toBeGreaterThanOrEqual(1);
    expect(equalBytes(await vma.load(0, 10), pattern(0, 10, 3))).toBe(true);
    expect(lab.fs.vmstat().workingset_refault_file).toBeGreaterThan(0);
  });

  it('referenced pages get a second chance (pgactivate)', async () => {
    lab = await mountLab({ hostPages: 8 });
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 32 * PS, 4));
    expect(lab.fs.vmstat().pgactivate).toBeGreaterThan(0);
  });

  it('dropCaches drops clean pages and keeps dirty ones', async () => {
    lab = await mountLab({ hostPages: 64 });
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 4 * PS, 5));
    await f.fsync();
    await f.write(PS, pattern(PS, 10, 6));
    const dropped = await lab.fs.dropCaches();
    expect(dropped).toBe(3);
    expect(lab.fs.snapshot('a', 0, 3).map((r) => r.host)).toEqual(['-', 'D', '-', '-']);
  });
});

describe('host page pool', () => {
  it('every page is a view into one SharedArrayBuffer and PTEs are shared Int32Arrays', async () => {
    lab = await mountLab({ hostPages: 8 });
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 3 * PS, 1));
    const pool = lab.fs.pageCache.pool;
    expect(pool.sab).toBeInstanceOf(SharedArrayBuffer);
    expect(pool.sab.byteLength).toBe(8 * PS);
    for (const e of f.mapping.i_pages.values()) {
      if (e.kind !== 'page') continue;
      expect(e.data.buffer).toBe(pool.sab);
      expect(e.data.byteOffset).toBe(e.slot * PS);
    }
    const vma = f.mmap(4 * PS);
    expect(vma.pte.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(vma.pte.length).toBe(4);
  });

  it('readahead never takes more than half of the host budget', async () => {
    lab = await mountLab({ hostPages: 8 });
    const f = await lab.fs.open('a', { create: true });
    expect(ra_max(f.mapping)).toBe(4);
  });
});
