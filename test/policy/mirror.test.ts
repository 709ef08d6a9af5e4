/**
 * Jan Kara's mirror scheme, one step a test, on the real adapter and real files, for page sizes
 * 4 KiB and 64 KiB: each step of the scheme (device read fault, device write fault, CPU read, CPU
 * write), reclaim leaving a device entry that readpage pulls from, fsync, direct I/O, truncate and
 * punch, unmount, device eviction, a refused page_mkwrite, and the DIRTY bit sparing a copy-back
 * (of a page a failed launch left writable and unwritten).
 * Page states are read with fs.snapshot (test_hmm's SNAPSHOT); invariants checked after each test.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DeviceMemory } from '../../src/device/index.ts';
import { HmmlabError } from '../../src/errors.ts';
import { HmmFs } from '../../src/fs/hmmfs.ts';
import { GpuDevice } from '../../src/gpu/device.ts';
import { FaultInjector } from '../../src/inject/inject.ts';
import { patternBytes } from '../../src/oplog/pattern.ts';
import { checkInvariants } from '../../src/policy/invariants.ts';
import { MirrorPolicy } from '../../src/policy/mirror.ts';

let gpu: GpuDevice;
beforeAll(async () => {
  gpu = await GpuDevice.open();
  gpu.timeoutMs = 20_000;
});
afterAll(() => gpu?.destroy());

interface Lab {
  fs: HmmFs;
  dm: DeviceMemory;
  mirror: MirrorPolicy;
  dir: string;
}
let lab: Lab | undefined;
afterEach(async () => {
  if (!lab) return;
  await lab.fs.unmount().catch(() => {});
  lab.dm.destroy();
  fs.rmSync(lab.dir, { recursive: true, force: true });
  lab = undefined;
});

async function mount(
  pageSize: number,
  o: { hostPages?: number; devicePages?: number; blocks?: number; inject?: FaultInjector } = {},
): Promise<Lab> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hmmlab-mirror-'));
  const dm = await DeviceMemory.create(gpu, { devicePages: o.devicePages ?? 32, pageSize });
  const mirror = new MirrorPolicy(dm);
  const hfs = await HmmFs.mount({
    dir,
    pageSize,
    hostPages: o.hostPages ?? 32,
    blocks: o.blocks,
    policy: mirror,
    inject: o.inject,
  });
  lab = { fs: hfs, dm, mirror, dir };
  return lab;
}

const disk = (l: Lab, name: string) => new Uint8Array(fs.readFileSync(path.join(l.dir, name)));
const vm = (l: Lab) => l.fs.vmstat();
/** [host, cpu, dev] of each page of [first, last]. */
const states = (l: Lab, name: string, first: number, last: number) =>
  l.fs.snapshot(name, first, last).map((r) => `${r.host}/${r.cpu}/${r.dev}`);

function expectBytes(got: Uint8Array, want: Uint8Array, what: string): void {
  expect(got.length, what).toBe(want.length);
  const d = got.findIndex((b, i) => b !== want[i]);
  expect(d, `${what}: first differing byte`).toBe(-1);
}

/** A file of `pages` pages written with tag 1 and fsynced: every page C. */
async function cleanFile(l: Lab, pages: number) {
  const ps = l.fs.pageSize;
  const f = await l.fs.open('a', { create: true });
  await f.write(0, patternBytes(0, pages * ps, 1));
  await f.fsync();
  return f;
}

describe.each([4096, 65536])('mirror policy, page size %i', (ps) => {
  it("device read fault write-protects every CPU mapping and copies A to A' (read-only)", async () => {
    const l = await mount(ps);
    const f = await cleanFile(l, 2);
    const vma = f.mmap();
    await vma.store(0, new Uint8Array([1])); // page 0: D, CPU rw
    await vma.load(ps, 1); // page 1: C, CPU ro
    const before = vm(l);
    const want = patternBytes(0, 2 * ps, 1);
    want[0] = 1;
    expectBytes(await f.deviceRead(0, 2 * ps), want, 'devread');
    const after = vm(l);
    expect(after.pgmkclean - before.pgmkclean).toBe(1); // only page 0 had a writable PTE
    expect(after.device_bytes_h2d - before.device_bytes_h2d).toBe(2 * ps); // A -> A', both pages
    expect(after.device_read_faults - before.device_read_faults).toBe(2);
    expect(states(l, 'a', 0, 1)).toEqual(['D/ro/ro', 'C/ro/ro']);
    await checkInvariants(l.fs);
  });

  it('device write fault calls page_mkwrite, clears every CPU mapping, marks A not uptodate and dirty', async () => {
    const l = await mount(ps);
    const f = await cleanFile(l, 2);
    const v1 = f.mmap();
    const v2 = f.mmap();
    await v1.store(0, new Uint8Array([9]));
    await v2.load(0, 2 * ps);
    const before = vm(l);
    await f.deviceWrite(0, 2 * ps, 2);
    const after = vm(l);
    expect(after.device_mkwrite - before.device_mkwrite).toBe(2);
    expect(after.pgmkwrite - before.pgmkwrite).toBe(2);
    expect(after.pgunmap - before.pgunmap).toBe(3); // page 0 in both VMAs, page 1 in v2
    const rows = l.fs.snapshot('a', 0, 1);
    expect(rows.map((r) => `${r.host}/${r.cpu}/${r.dev}`)).toEqual(['S/-/rw', 'S/-/rw']);
    expect(rows.every((r) => r.mapcount === 0 && !r.flags.includes('U') && r.flags.includes('D'))).toBe(true);
    expect(rows.every((r) => r.devDirty)).toBe(true);
    await checkInvariants(l.fs);
  });

  it("CPU read pulls the device's data back and write-protects A' (D/ro)", async () => {
    const l = await mount(ps);
    const f = await cleanFile(l, 3);
    await f.deviceWrite(0, 2 * ps, 5);
    const before = vm(l);
    const want = patternBytes(0, 3 * ps, 1);
    want.set(patternBytes(0, 2 * ps, 5));
    expectBytes(await f.read(0, 3 * ps), want, 'read(2) after devwrite');
    const after = vm(l);
    expect(after.device_copybacks - before.device_copybacks).toBe(2);
    expect(after.device_bytes_d2h - before.device_bytes_d2h).toBe(2 * ps);
    expect(after.device_write_protects - before.device_write_protects).toBe(2);
    expect(states(l, 'a', 0, 2)).toEqual(['D/-/ro', 'D/-/ro', 'C/-/-']);
    expect(l.fs.snapshot('a', 0, 1).every((r) => !r.devDirty)).toBe(true);
    // and an mmap load sees the same bytes, without another copy
    expectBytes(await f.mmap().load(0, 2 * ps), want.subarray(0, 2 * ps), 'mmap load');
    expect(vm(l).device_copybacks).toBe(after.device_copybacks);
    await checkInvariants(l.fs);
  });

  it("CPU write (write(2) and an mmap store) revokes A'", async () => {
    const l = await mount(ps);
    const f = await cleanFile(l, 2);
    await f.deviceWrite(0, 2 * ps, 3);
    const before = vm(l);
    await f.write(10, patternBytes(10, 20, 4)); // partial: page 0 pulled back first
    await f.mmap().store(ps + 7, patternBytes(ps + 7, 5, 6));
    const after = vm(l);
    expect(after.device_revocations - before.device_revocations).toBe(2);
    expect(states(l, 'a', 0, 1)).toEqual(['D/-/-', 'D/rw/-']);
    const want = patternBytes(0, 2 * ps, 3);
    want.set(patternBytes(10, 20, 4), 10);
    want.set(patternBytes(ps + 7, 5, 6), ps + 7);
    expectBytes(await f.read(0, 2 * ps), want, 'read after CPU writes');
    expectBytes(await f.deviceRead(0, 2 * ps), want, 'devread after CPU writes');
    await checkInvariants(l.fs);
  });

  it('reclaim leaves a device entry and readpage pulls from the device, not the disk', async () => {
    const l = await mount(ps);
    const f = await cleanFile(l, 2);
    await f.deviceRead(0, ps); // page 0: C with A' ro
    await f.deviceWrite(ps, ps, 7); // page 1: S with A' rw
    await l.fs.dropCaches();
    expect(states(l, 'a', 0, 1)).toEqual(['E/-/ro', 'E/-/rw']);
    expect(vm(l).nr_device_entries).toBe(2);
    await checkInvariants(l.fs);
    // Scribble over the disk behind the cache: the data must now come from the device.
    fs.writeFileSync(path.join(l.dir, 'a'), new Uint8Array(2 * ps).fill(0xee));
    const before = vm(l);
    const want = patternBytes(0, 2 * ps, 1);
    want.set(patternBytes(ps, ps, 7), ps);
    expectBytes(await f.read(0, 2 * ps), want, 'read of device entries');
    expect(vm(l).device_pulls - before.device_pulls).toBe(2);
    expect(vm(l).pgpgin - before.pgpgin).toBe(0);
    expect(states(l, 'a', 0, 1)).toEqual(['C/-/ro', 'D/-/ro']);
    await checkInvariants(l.fs);
  });

  it('fsync puts device-written data on disk, device entries included', async () => {
    const l = await mount(ps);
    const f = await cleanFile(l, 3);
    await f.deviceWrite(0, 3 * ps, 8);
    await l.fs.dropCaches(); // all three: E with A' rw
    await f.deviceWrite(4, ps - 8, 9); // page 0 again, still E
    await f.fsync();
    const want = patternBytes(0, 3 * ps, 8);
    want.set(patternBytes(4, ps - 8, 9), 4);
    expectBytes(disk(l, 'a'), want, 'backing file after fsync');
    expect(vm(l).device_bounce_writebacks).toBe(3);
    expect(states(l, 'a', 0, 2)).toEqual(['E/-/ro', 'E/-/ro', 'E/-/ro']);
    await checkInvariants(l.fs);
  });

  it('a direct I/O read sees device-written data', async () => {
    const l = await mount(ps);
    const f = await cleanFile(l, 2);
    await f.deviceWrite(512, ps, 11);
    const want = patternBytes(0, 2 * ps, 1);
    want.set(patternBytes(512, ps, 11), 512);
    expectBytes(await f.readDirect(0, 2 * ps), want, 'O_DIRECT read');
    expect(states(l, 'a', 0, 1)).toEqual(['C/-/ro', 'C/-/ro']);
    await checkInvariants(l.fs);
  });

  it("direct I/O write, truncate and punch invalidate A'", async () => {
    const l = await mount(ps);
    const f = await cleanFile(l, 4);
    await f.deviceWrite(0, 4 * ps, 12);
    await f.writeDirect(0, patternBytes(0, 512, 13)); // page 0
    expect(states(l, 'a', 0, 0)).toEqual(['-/-/-']);
    await f.punchHole(ps, ps); // page 1, whole
    expect(states(l, 'a', 1, 1)).toEqual(['-/-/-']);
    await f.truncate(2 * ps + 100); // page 2 cut in part, page 3 gone
    expect(states(l, 'a', 2, 3)).toEqual(['D/-/-', '-/-/-']);
    expect(l.mirror.deviceIndices(f.mapping)).toEqual([]);
    expect(l.dm.pool.freeCount).toBe(l.dm.pool.devicePages);
    const want = patternBytes(0, 2 * ps + 100, 12);
    want.set(patternBytes(0, 512, 13));
    want.fill(0, ps, 2 * ps);
    expectBytes(await f.read(0, 4 * ps), want, 'read after invalidations');
    expectBytes(await f.deviceRead(0, 2 * ps + 100), want, 'devread after invalidations');
    await checkInvariants(l.fs);
  });

  it('unmount writes back everything the device holds', async () => {
    const l = await mount(ps, { hostPages: 4 });
    const f = await cleanFile(l, 6);
    await f.deviceWrite(0, 6 * ps, 14); // more pages than host pages: some become device entries
    await l.fs.unmount();
    expectBytes(disk(l, 'a'), patternBytes(0, 6 * ps, 14), 'backing file after unmount');
    expect(l.dm.pool.freeCount).toBe(l.dm.pool.devicePages);
  });

  it('device eviction with a tiny frame pool keeps the data', async () => {
    const l = await mount(ps, { devicePages: 2, hostPages: 4 });
    const f = await cleanFile(l, 8);
    await f.deviceWrite(0, 8 * ps, 15); // 8 pages through 2 frames
    const v = vm(l);
    expect(v.device_evictions).toBeGreaterThanOrEqual(6);
    expect(v.device_evictions_dirty).toBeGreaterThanOrEqual(6);
    await checkInvariants(l.fs);
    expectBytes(await f.read(0, 8 * ps), patternBytes(0, 8 * ps, 15), 'read after eviction');
    await f.fsync();
    expectBytes(disk(l, 'a'), patternBytes(0, 8 * ps, 15), 'disk after eviction and fsync');
  });

  it('a refused page_mkwrite fails that page with EFAULT (SIGBUS) and the other pages land', async () => {
    const l = await mount(ps, { blocks: 2 });
    const f = await l.fs.open('a', { create: true });
    await f.write(0, patternBytes(0, 2 * ps, 1)); // two blocks: the budget
    await f.truncate(4 * ps); // pages 2, 3: holes, no block
    const e = await f.deviceWrite(0, 4 * ps, 16).catch((x) => x);
    expect(e).toBeInstanceOf(HmmlabError);
    expect(e.code).toBe('EFAULT');
    expect(e.message).toMatch(/^SIGBUS: device write to pages 2-3 of a refused: page_mkwrite: ENOSPC/);
    expect(vm(l).device_mkwrite_refused).toBe(2);
    const want = new Uint8Array(4 * ps);
    want.set(patternBytes(0, 2 * ps, 16));
    expectBytes(await f.read(0, 4 * ps), want, 'read after the refused run');
    await checkInvariants(l.fs);
  });

  it('the device DIRTY bit spares the copy-back of a writable page it never wrote', async () => {
    const inject = new FaultInjector();
    const l = await mount(ps, { inject });
    const f = await cleanFile(l, 2);
    await f.deviceWrite(0, ps, 2); // page 0: written by the device
    // A write over both pages: its first launch writes page 0 and faults on page 1, whose service
    // makes it writable; the launch that would replay page 1's stores fails. Page 1 is now writable
    // on the device, and the device never wrote it: its DIRTY bit is clear.
    inject.failNext('kernel-launch', 1);
    await expect(f.deviceWrite(0, 2 * ps, 3)).rejects.toMatchObject({ code: 'EGPU' });
    const before = vm(l);
    const want = patternBytes(0, 2 * ps, 1);
    want.set(patternBytes(0, ps, 3));
    expectBytes(await f.read(0, 2 * ps), want, 'read');
    const after = vm(l);
    expect(after.device_copybacks - before.device_copybacks).toBe(1);
    expect(after.device_copybacks_spared - before.device_copybacks_spared).toBe(1);
    expect(after.device_bytes_d2h - before.device_bytes_d2h).toBe(ps);
    await checkInvariants(l.fs);
  });
});

describe('mirror policy: batching and loss', () => {
  it('readpage of read-only device entries brings their neighbours back in the same copy', async () => {
    const ps = 4096;
    const l = await mount(ps);
    const f = await cleanFile(l, 8);
    await f.deviceRead(0, 8 * ps);
    await l.fs.dropCaches();
    expect(states(l, 'a', 0, 7).every((s) => s === 'E/-/ro')).toBe(true);
    let copies = 0;
    const copyFromFrames = l.dm.copyFromFrames.bind(l.dm);
    l.dm.copyFromFrames = (frames, into) => {
      copies++;
      return copyFromFrames(frames, into);
    };
    const pull = l.dm.pull.bind(l.dm);
    l.dm.pull = (space, req) => {
      if (req.copies?.length) copies++;
      return pull(space, req);
    };
    expectBytes(await f.read(0, 8 * ps), patternBytes(0, 8 * ps, 1), 'read of 8 device entries');
    expect(vm(l).device_pulls).toBe(8);
    expect(copies).toBe(1);
    await checkInvariants(l.fs);
  });

  it('device loss: the next op is EIO naming the dirty pages lost; clean pages come from disk again', async () => {
    const ps = 4096;
    const own = await GpuDevice.open();
    own.timeoutMs = 5_000;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hmmlab-mirror-'));
    const dm = await DeviceMemory.create(own, { devicePages: 16, pageSize: ps });
    const hfs = await HmmFs.mount({ dir, pageSize: ps, hostPages: 16, policy: new MirrorPolicy(dm) });
    try {
      const f = await hfs.open('a', { create: true });
      await f.write(0, patternBytes(0, 4 * ps, 1));
      await f.fsync();
      await f.deviceWrite(0, 2 * ps, 2); // pages 0-1: written by the device
      await f.deviceRead(3 * ps, ps); // page 3: a clean copy
      own.destroy();
      const t0 = Date.now();
      const e = await f.read(3 * ps, 4).catch((x) => x);
      expect(Date.now() - t0).toBeLessThan(5_000);
      expect(e).toBeInstanceOf(HmmlabError);
      expect(e.code).toBe('EIO');
      expect(e.message).toMatch(/^device lost: dirty data of pages 0-1 of a lost/);
      expectBytes(await f.read(0, 4 * ps), patternBytes(0, 4 * ps, 1), 'read after the loss');
      await expect(f.deviceRead(0, 4)).rejects.toMatchObject({ code: 'ENODEV' });
      await hfs.unmount();
    } finally {
      await hfs.unmount().catch(() => {});
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('mirror policy: device ops and their errors', () => {
  it('device ops outside EOF or unaligned are EINVAL; without the mirror policy ENODEV', async () => {
    const l = await mount(4096);
    const f = await cleanFile(l, 1);
    await expect(f.deviceRead(4096, 4)).rejects.toThrow(/runs past EOF 4096/);
    await expect(f.deviceWrite(2, 4, 1)).rejects.toThrow(/multiples of 4/);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hmmlab-mirror-'));
    const plain = await HmmFs.mount({ dir });
    const g = await plain.open('b', { create: true });
    await g.write(0, new Uint8Array(16));
    const e = await g.deviceRead(0, 16).catch((x) => x);
    expect(e.code).toBe('ENODEV');
    expect(e.message).toMatch(/no device: mount with a device policy, mirror or migrate/);
    await plain.unmount();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('detach copies every device-held page back; device ops are ENODEV afterwards', async () => {
    const l = await mount(4096, { hostPages: 4 });
    const f = await cleanFile(l, 6);
    await f.deviceWrite(0, 6 * 4096, 17);
    await l.mirror.detach();
    expect(l.fs.snapshot('a', 0, 5).every((r) => r.dev === '-' && r.host !== 'E')).toBe(true);
    await checkInvariants(l.fs);
    await expect(f.deviceRead(0, 4)).rejects.toMatchObject({ code: 'ENODEV' });
    expectBytes(await f.read(0, 6 * 4096), patternBytes(0, 6 * 4096, 17), 'read after detach');
  });
});
