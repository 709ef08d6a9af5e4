/**
 * Jérôme Glisse's migrate scheme, one step a test, on the real adapter and real files, for page sizes
 * 4 KiB and 64 KiB (mirror.test.ts is Kara's scheme, step for step): a device fault moves the page
 * (A freed, a device entry standing), page_mkwrite for a write fault (and its refusal), read(2) and
 * write(2) through a bounce page (partial pages too), an mmap fault migrating the page back, fsync
 * through a bounce page, direct I/O, truncate and punch, device eviction (home, or to disk when the
 * host is full), unmount, detach and loss. Page states are read with fs.snapshot (test_hmm's
 * SNAPSHOT); host memory held is nr_file_pages; invariants are checked after each step.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { GpuDevice } from '../../src/gpu/device.ts';
import { checkInvariants } from '../../src/policy/invariants.ts';
import { rejection } from '../helpers/rejection.ts';
import { type DeviceLab, delta, diskBytes, expectBytes, mountDevice, openGpu, pattern } from './helpers.ts';

let gpu: GpuDevice;
beforeAll(async () => {
  gpu = await openGpu();
});
afterAll(() => {
  if (!gpu.lost) gpu.destroy();
});

let lab: DeviceLab | undefined;
afterEach(async () => {
  await lab?.cleanup();
  lab = undefined;
});

async function mount(
  pageSize: number,
  o: { hostPages?: number; devicePages?: number; blocks?: number } = {},
) {
  lab = await mountDevice(gpu, {
    policy: 'migrate',
    pageSize,
    hostPages: o.hostPages ?? 32,
    devicePages: o.devicePages ?? 32,
    blocks: o.blocks,
  });
  return lab;
}

const vm = (l: DeviceLab) => l.fs.vmstat();
/** host/cpu/dev of each page of [first, last]. */
const states = (l: DeviceLab, first: number, last: number) =>
  l.fs.snapshot('a', first, last).map((r) => `${r.host}/${r.cpu}/${r.dev}`);
const all = (s: string, n: number) => Array.from({ length: n }, () => s);

/** A file of `pages` pages written with tag 1 and fsynced: every page C. */
async function cleanFile(l: DeviceLab, pages: number) {
  const ps = l.fs.pageSize;
  const f = await l.fs.open('a', { create: true });
  await f.write(0, pattern(0, pages * ps, 1));
  await f.fsync();
  return f;
}

describe.each([4096, 65536])('migrate policy, page size %i', (ps) => {
  it('a device read fault moves A to the device (read-only) and frees A; the CPU mappings go', async () => {
    const l = await mount(ps);
    const f = await cleanFile(l, 2);
    const vma = f.mmap();
    await vma.load(0, 2 * ps); // both pages mapped read-only by the CPU
    const before = vm(l);
    expectBytes(await f.deviceRead(0, 2 * ps), pattern(0, 2 * ps, 1), 'devread');
    const d = delta(before, vm(l));
    expect(d.device_migrations_to_device).toBe(2);
    expect(d.device_bytes_h2d).toBe(2 * ps);
    expect(d.pgunmap).toBe(2);
    expect(states(l, 0, 1)).toEqual(all('E/-/ro', 2));
    expect(vm(l).nr_file_pages).toBe(0); // no host memory held for them
    expect(vm(l).nr_device_entries).toBe(2);
    await checkInvariants(l.fs);
  });

  it('a device write fault calls page_mkwrite first, then moves the page: E with A writable', async () => {
    const l = await mount(ps);
    const f = await cleanFile(l, 2);
    await f.deviceRead(0, ps); // page 0: E ro already
    const before = vm(l);
    await f.deviceWrite(0, 2 * ps, 2);
    const d = delta(before, vm(l));
    expect(d.device_mkwrite).toBe(2); // page 0: upgraded (no copy); page 1: moved
    expect(d.pgmkwrite).toBe(2);
    expect(d.device_migrations_to_device).toBe(1);
    expect(d.device_bytes_h2d).toBe(ps);
    const rows = l.fs.snapshot('a', 0, 1);
    expect(rows.map((r) => `${r.host}/${r.cpu}/${r.dev}`)).toEqual(all('E/-/rw', 2));
    expect(rows.every((r) => r.devDirty)).toBe(true);
    await checkInvariants(l.fs);
  });

  it('a refused page_mkwrite fails that page (EFAULT, SIGBUS): it stays on the host; the others move', async () => {
    const l = await mount(ps, { blocks: 2 });
    const f = await l.fs.open('a', { create: true });
    await f.write(0, pattern(0, 2 * ps, 1)); // two blocks: the budget
    await f.truncate(4 * ps); // pages 2, 3: holes, no block
    const e = await rejection(f.deviceWrite(0, 4 * ps, 16));
    expect(e.code).toBe('EFAULT');
    expect(e.message).toMatch(/^SIGBUS: device write to pages 2-3 of a refused: page_mkwrite: ENOSPC/);
    expect(states(l, 0, 1)).toEqual(all('E/-/rw', 2));
    expect(states(l, 2, 3)).toEqual(all('C/-/-', 2));
    const want = new Uint8Array(4 * ps);
    want.set(pattern(0, 2 * ps, 16));
    expectBytes(await f.read(0, 4 * ps), want, 'read after the refused run');
    await checkInvariants(l.fs);
  });

  it('read(2) of a device-held page goes through a bounce page: no host page, the page stays', async () => {
    const l = await mount(ps);
    const f = await cleanFile(l, 3);
    await f.deviceWrite(0, 2 * ps, 5);
    const before = vm(l);
    const want = pattern(0, 3 * ps, 1);
    want.set(pattern(0, 2 * ps, 5));
    expectBytes(await f.read(0, 3 * ps), want, 'read(2) after devwrite');
    const d = delta(before, vm(l));
    expect(d.device_bounce_reads).toBe(2);
    expect(d.device_bytes_d2h).toBe(2 * ps);
    expect(d.device_revocations).toBe(0);
    expect(d.device_write_protects).toBe(0);
    expect(states(l, 0, 2)).toEqual(['E/-/rw', 'E/-/rw', 'C/-/-']); // page 2 read from disk
    expect(vm(l).nr_file_pages).toBe(1);
    // the device reads them again without a fault
    const again = vm(l);
    expectBytes(await f.deviceRead(0, 2 * ps), want.subarray(0, 2 * ps), 'devread');
    expect(delta(again, vm(l)).device_faults).toBe(0);
    await checkInvariants(l.fs);
  });

  it('write(2) of device-held pages bounces, a partial page read first; the pages stay on the device', async () => {
    const l = await mount(ps);
    const f = await cleanFile(l, 3);
    await f.deviceRead(0, 3 * ps); // all three: E ro, clean
    const before = vm(l);
    await f.write(ps, pattern(ps, ps, 2)); // page 1 whole
    await f.write(2 * ps + 10, pattern(2 * ps + 10, 20, 3)); // page 2 in part
    const d = delta(before, vm(l));
    expect(d.device_bounce_writes).toBe(2);
    expect(d.device_bounce_reads).toBe(1); // only the partial page is read first
    expect(d.device_bytes_h2d).toBe(2 * ps);
    expect(d.device_bytes_d2h).toBe(ps);
    expect(vm(l).nr_file_pages).toBe(0);
    expect(states(l, 0, 2)).toEqual(all('E/-/ro', 3));
    const want = pattern(0, 3 * ps, 1);
    want.set(pattern(ps, ps, 2), ps);
    want.set(pattern(2 * ps + 10, 20, 3), 2 * ps + 10);
    await checkInvariants(l.fs); // read-only entries newer than the disk are legal here
    expectBytes(await f.deviceRead(0, 3 * ps), want, 'devread sees the bounced writes');
    expectBytes(diskBytes(l.dir, 'a'), pattern(0, 3 * ps, 1), 'disk before fsync');
    const w = vm(l);
    await f.fsync();
    expect(delta(w, vm(l)).device_bounce_writebacks).toBe(2); // pages 1, 2: newer than the disk
    expectBytes(diskBytes(l.dir, 'a'), want, 'disk after fsync');
    await checkInvariants(l.fs);
  });

  it("an mmap fault migrates the page back: A allocated and filled from A', A' freed", async () => {
    const l = await mount(ps);
    const f = await cleanFile(l, 2);
    await f.deviceWrite(0, 2 * ps, 7);
    const vma = f.mmap();
    const before = vm(l);
    expectBytes(await vma.load(0, ps), pattern(0, ps, 7), 'mmap load');
    let d = delta(before, vm(l));
    expect(d.device_migrations_to_ram).toBe(1);
    expect(d.device_revocations).toBe(1);
    expect(d.device_bytes_d2h).toBe(ps);
    expect(states(l, 0, 1)).toEqual(['D/ro/-', 'E/-/rw']); // dirty: the device wrote it
    await vma.store(ps + 4, pattern(ps + 4, 4, 8)); // a write fault on page 1: home, then writable
    d = delta(before, vm(l));
    expect(d.device_migrations_to_ram).toBe(2);
    expect(states(l, 0, 1)).toEqual(['D/ro/-', 'D/rw/-']);
    expect(l.dm.pool.freeCount).toBe(l.dm.pool.devicePages);
    const want = pattern(0, 2 * ps, 7);
    want.set(pattern(ps + 4, 4, 8), ps + 4);
    expectBytes(await f.read(0, 2 * ps), want, 'read');
    await checkInvariants(l.fs);
  });

  it("fsync writes A' to disk through a bounce page; A' becomes read-only", async () => {
    const l = await mount(ps);
    const f = await cleanFile(l, 3);
    await f.deviceWrite(0, 2 * ps, 8);
    await f.deviceRead(2 * ps, ps); // page 2: clean, nothing to write
    await f.fsync();
    const want = pattern(0, 3 * ps, 1);
    want.set(pattern(0, 2 * ps, 8));
    expectBytes(diskBytes(l.dir, 'a'), want, 'backing file after fsync');
    expect(vm(l).device_bounce_writebacks).toBe(2);
    expect(states(l, 0, 2)).toEqual(all('E/-/ro', 3));
    await checkInvariants(l.fs);
  });

  it("a direct I/O read writes device-held data back first; a direct write invalidates A'", async () => {
    const l = await mount(ps);
    const f = await cleanFile(l, 2);
    await f.deviceWrite(512, ps, 11);
    const want = pattern(0, 2 * ps, 1);
    want.set(pattern(512, ps, 11), 512);
    expectBytes(await f.readDirect(0, 2 * ps), want, 'O_DIRECT read');
    expect(states(l, 0, 1)).toEqual(all('E/-/ro', 2));
    await f.writeDirect(0, pattern(0, 512, 13)); // page 0
    want.set(pattern(0, 512, 13));
    expect(states(l, 0, 1)).toEqual(['-/-/-', 'E/-/ro']);
    expectBytes(await f.read(0, 2 * ps), want, 'read after the direct write');
    await checkInvariants(l.fs);
  });

  it("truncate and punch free A'; a page cut in part is zeroed through a bounce page", async () => {
    const l = await mount(ps);
    const f = await cleanFile(l, 4);
    await f.deviceWrite(0, 4 * ps, 12);
    const before = vm(l);
    await f.punchHole(ps, ps); // page 1, whole
    expect(states(l, 1, 1)).toEqual(['-/-/-']);
    await f.truncate(2 * ps + 100); // page 2 cut in part (bounced), page 3 gone
    const d = delta(before, vm(l));
    expect(d.device_bounce_writes).toBe(1);
    expect(d.device_migrations_to_ram).toBe(0);
    // page 2 is write-protected for its bounce (the device must not write it meanwhile)
    expect(states(l, 0, 3)).toEqual(['E/-/rw', '-/-/-', 'E/-/ro', '-/-/-']);
    expect(l.policy.deviceIndices(f.mapping)).toEqual([0, 2]);
    const want = pattern(0, 2 * ps + 100, 12);
    want.fill(0, ps, 2 * ps);
    expectBytes(await f.read(0, 4 * ps), want, 'read after invalidations');
    expectBytes(await f.deviceRead(0, 2 * ps + 100), want, 'devread after invalidations');
    await checkInvariants(l.fs);
    await f.truncate(0);
    expect(l.dm.pool.freeCount).toBe(l.dm.pool.devicePages);
  });

  it('device eviction moves pages home while the host has room', async () => {
    const l = await mount(ps, { devicePages: 2, hostPages: 16 });
    const f = await cleanFile(l, 8);
    await f.deviceWrite(0, 8 * ps, 15); // 8 pages through 2 frames
    const v = vm(l);
    expect(v.device_evictions).toBeGreaterThanOrEqual(6);
    expect(v.device_migrations_to_ram).toBe(v.device_evictions);
    const s = states(l, 0, 7);
    expect(s.filter((x) => x === 'E/-/rw').length).toBe(2); // the frames' last users
    expect(s.filter((x) => x === 'D/-/-').length).toBe(6); // home again, dirty
    await checkInvariants(l.fs);
    expectBytes(await f.read(0, 8 * ps), pattern(0, 8 * ps, 15), 'read after eviction');
    await f.fsync();
    expectBytes(diskBytes(l.dir, 'a'), pattern(0, 8 * ps, 15), 'disk after eviction and fsync');
  });

  it('device eviction writes to disk and drops the page when the host has no free page', async () => {
    const l = await mount(ps, { devicePages: 2, hostPages: 4 });
    const f = await cleanFile(l, 8);
    await l.fs.dropCaches();
    // Fill the host with another file's dirty pages: no free page, nothing reclaim can drop cheaply.
    const g = await l.fs.open('b', { create: true });
    await f.deviceWrite(0, 2 * ps, 15); // pages 0, 1 on the device, dirty
    await g.write(0, pattern(0, 4 * ps, 3));
    expect(vm(l).nr_free_pages).toBe(0);
    const before = vm(l);
    await f.deviceRead(4 * ps, 2 * ps); // needs both frames: 0 and 1 must go
    const d = delta(before, vm(l));
    expect(d.device_evictions).toBe(2);
    expect(d.device_bounce_writebacks).toBe(2);
    expect(d.device_migrations_to_ram).toBe(0);
    expect(states(l, 0, 1)).toEqual(all('-/-/-', 2));
    const want = pattern(0, 8 * ps, 1);
    want.set(pattern(0, 2 * ps, 15));
    expectBytes(
      diskBytes(l.dir, 'a').subarray(0, 2 * ps),
      want.subarray(0, 2 * ps),
      'disk: the evicted pages',
    );
    await checkInvariants(l.fs);
    expectBytes(await f.read(0, 8 * ps), want, 'read after eviction to disk');
  });

  it('unmount writes back everything the device holds and frees every frame', async () => {
    const l = await mount(ps, { hostPages: 4 });
    const f = await cleanFile(l, 6);
    await f.deviceWrite(0, 6 * ps, 14);
    await f.write(ps + 3, pattern(ps + 3, 9, 15)); // bounced
    await l.fs.unmount();
    const want = pattern(0, 6 * ps, 14);
    want.set(pattern(ps + 3, 9, 15), ps + 3);
    expectBytes(diskBytes(l.dir, 'a'), want, 'backing file after unmount');
    expect(l.dm.pool.freeCount).toBe(l.dm.pool.devicePages);
    expect(l.dm.spaceCount).toBe(0);
  });

  it('detach brings every page home; device ops are ENODEV afterwards', async () => {
    const l = await mount(ps, { hostPages: 8 });
    const f = await cleanFile(l, 6);
    await f.deviceWrite(0, 6 * ps, 17);
    await l.policy.detach();
    expect(l.fs.snapshot('a', 0, 5).every((r) => r.dev === '-' && r.host !== 'E')).toBe(true);
    await checkInvariants(l.fs);
    expect((await rejection(f.deviceRead(0, 4))).code).toBe('ENODEV');
    expectBytes(await f.read(0, 6 * ps), pattern(0, 6 * ps, 17), 'read after detach');
  });

  it("Glisse's case: a dataset read from disk, then used by the device only, holds no host memory", async () => {
    const l = await mount(ps, { hostPages: 16, devicePages: 16 });
    const f = await cleanFile(l, 8);
    await l.fs.dropCaches();
    expectBytes(await f.read(0, 8 * ps), pattern(0, 8 * ps, 1), 'read of the dataset');
    expect(vm(l).nr_file_pages).toBe(8);
    for (let k = 0; k < 3; k++) await f.deviceRead(0, 8 * ps);
    expect(vm(l).nr_file_pages).toBe(0);
    expect(vm(l).device_bytes_h2d).toBe(8 * ps); // moved once; later kernels fault nothing
    await checkInvariants(l.fs);
  });
});

describe('migrate policy: device loss', () => {
  it('EIO naming the device-held pages newer than the disk; the clean ones are read from disk again', async () => {
    const ps = 4096;
    const own = await openGpu(5_000);
    try {
      lab = await mountDevice(own, { policy: 'migrate', pageSize: ps, hostPages: 16, devicePages: 16 });
      const f = await lab.fs.open('a', { create: true });
      await f.write(0, pattern(0, 4 * ps, 1));
      await f.fsync();
      await f.deviceWrite(0, 2 * ps, 2); // pages 0-1: written by the device
      await f.deviceRead(3 * ps, ps); // page 3: clean on the device
      own.destroy();
      const e = await rejection(f.read(3 * ps, 4));
      expect(e.code).toBe('EIO');
      expect(e.message).toMatch(/^device lost: dirty data of pages 0-1 of a lost/);
      expectBytes(await f.read(0, 4 * ps), pattern(0, 4 * ps, 1), 'read after the loss');
      expect((await rejection(f.deviceRead(0, 4))).code).toBe('ENODEV');
      await lab.fs.unmount();
    } finally {
      await lab?.cleanup();
      lab = undefined;
    }
  });
});
