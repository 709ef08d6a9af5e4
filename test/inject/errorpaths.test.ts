/**
 * Every error path keeps the data (each device policy, mirror and migrate, on the real adapter and
 * real files, page sizes 4 KiB and 64 KiB). A fault is injected at one step of one path (src/inject):
 * the operation fails with the error the real failure would give, and every page is left as it was
 * (host flags, device permission and DIRTY bit, frame ownership), so the operation can simply be run
 * again and then gives the data of a run without the fault. A lost device is the one failure that
 * may lose data, and it names exactly which pages (under migrate a page the device holds has no
 * host copy, so its newest data goes with the device). Migrate's own moves are checked too: a
 * migration to the device frees A only once the copy is done, a migration home frees A' only after
 * its copy landed, and a bounce read or write that fails changes nothing.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DeviceMemory } from '../../src/device/index.ts';
import type { GpuDevice } from '../../src/gpu/device.ts';
import { FaultInjector } from '../../src/inject/inject.ts';
import { type Page, trylock_page, unlock_page } from '../../src/mm/index.ts';
import { checkInvariants } from '../../src/policy/invariants.ts';
import { rejection } from '../helpers/rejection.ts';
import {
  type DeviceLab,
  type DevicePolicyName,
  delta,
  diskBytes,
  expectBytes,
  MATRIX,
  mountDevice,
  openGpu,
  pattern,
} from '../policy/helpers.ts';

const NAME = 'f';
let gpu: GpuDevice;
beforeAll(async () => {
  gpu = await openGpu();
});
afterAll(() => gpu?.destroy());

const labs: DeviceLab[] = [];
const ownGpus: GpuDevice[] = [];
afterEach(async () => {
  for (const l of labs.splice(0)) await l.cleanup();
  for (const g of ownGpus.splice(0)) if (!g.lost) g.destroy();
});

async function setup(
  policy: DevicePolicyName,
  P: number,
  o: { hostPages?: number; devicePages?: number; gpu?: GpuDevice; batchSize?: number } = {},
) {
  const inject = new FaultInjector();
  const lab = await mountDevice(o.gpu ?? gpu, {
    policy,
    pageSize: P,
    hostPages: o.hostPages ?? 16,
    devicePages: o.devicePages ?? 16,
    batchSize: o.batchSize,
    inject,
  });
  labs.push(lab);
  const f = await lab.fs.open(NAME, { create: true });
  return { lab, f, inject };
}

/** host/cpu/dev/frame/dirty of each page: what a failed operation must leave as it found. */
const rows = (lab: DeviceLab, first: number, last: number) =>
  lab.fs.snapshot(NAME, first, last).map((r) => `${r.host}/${r.cpu}/${r.dev}/${r.frame}/${r.devDirty}`);

/** The PTEs as the GPU holds them (not the host's shadow). */
async function gpuPtes(lab: DeviceLab, f: { mapping: { id: number } }, first: number, last: number) {
  const t = await lab.dm.snapshot(lab.dm.space(f.mapping.id), first, last);
  return t.map((r) => `${r.perm}/${r.frame}/${r.dirty}`);
}

describe.each(MATRIX)('error paths keep the data (%s), page size %i', (policy, P) => {
  const migrate = policy === 'migrate';
  /** The host letter of a page the device may write: S (mirror, A stale beside A') or E (migrate, A gone). */
  const held = migrate ? 'E' : 'S';
  it('a failed read of the disk in fault service leaves the pages faultable (pread: EIO)', async () => {
    const { lab, f, inject } = await setup(policy, P);
    await f.write(0, pattern(0, 4 * P, 1));
    await f.fsync();
    await lab.fs.dropCaches();
    const before = rows(lab, 0, 3);
    inject.failNext('pread');
    const e = await rejection(f.deviceRead(0, 4 * P));
    expect(e.code).toBe('EIO');
    expect(e.message).toMatch(/readpage of page 0 .*pread: I\/O error/);
    expect(rows(lab, 0, 3)).toEqual(before);
    expect(lab.dm.pool.freeCount).toBe(16); // no frame kept for a fault that was not served
    await checkInvariants(lab.fs);
    expectBytes(await f.deviceRead(0, 4 * P), pattern(0, 4 * P, 1), 'devread run again');
  });

  it('a failed copy to the device leaves its pages as they were; earlier steps stay granted', async () => {
    // 16 host pages: fault service locks 4 pages a step; the copy of the second step fails.
    const { lab, f, inject } = await setup(policy, P);
    await f.write(0, pattern(0, 8 * P, 1));
    await f.fsync();
    inject.failNext('copy-to-device', 1);
    const v0 = lab.fs.vmstat();
    const e = await rejection(f.deviceWrite(0, 8 * P, 2));
    expect(e.code).toBe('EGPU');
    expect(e.message).toMatch(/copy of 4 pages to device frames/);
    // Step 1 was granted and installed (the replay that would have written it never ran);
    // step 2 is as the fault found it: clean, no device copy, no frame.
    expect(rows(lab, 0, 3).every((r) => new RegExp(`^${held}/-/rw/\\d+/false$`).test(r))).toBe(true);
    expect(rows(lab, 4, 7)).toEqual(Array.from({ length: 4 }, () => 'C/-/-/null/false'));
    expect(lab.dm.pool.freeCount).toBe(12);
    expect(delta(v0, lab.fs.vmstat()).device_copies_to_device).toBe(4);
    await checkInvariants(lab.fs);
    // mirror: the device never wrote step 1's pages, so reading them copies nothing back. migrate:
    // they left the host, so read(2) bounces them; they are still clean, so fsync writes none.
    const v1 = lab.fs.vmstat();
    expectBytes(await f.read(0, 8 * P), pattern(0, 8 * P, 1), 'read after the failed devwrite');
    if (migrate) {
      expect(delta(v1, lab.fs.vmstat()).device_bounce_reads).toBe(4);
      await f.fsync();
      expect(delta(v1, lab.fs.vmstat()).device_bounce_writebacks).toBe(0);
    } else {
      expect(delta(v1, lab.fs.vmstat()).device_copybacks).toBe(0);
      expect(delta(v1, lab.fs.vmstat()).device_copybacks_spared).toBe(4);
    }
    await f.deviceWrite(0, 8 * P, 2);
    expectBytes(await f.read(0, 8 * P), pattern(0, 8 * P, 2), 'read after the devwrite ran again');
  });

  it("a failed copy-back (migrate: a failed bounce read) keeps the device's copy, its write permission and its DIRTY bit", async () => {
    const { lab, f, inject } = await setup(policy, P);
    await f.write(0, pattern(0, 2 * P, 1));
    await f.fsync();
    await f.deviceWrite(0, 2 * P, 2);
    const before = rows(lab, 0, 1);
    expect(before.every((r) => new RegExp(`^${held}/-/rw/\\d+/true$`).test(r))).toBe(true);
    const ptes = await gpuPtes(lab, f, 0, 1);
    inject.failNext('copy-from-device');
    const e = await rejection(f.read(0, 2 * P));
    expect(e.code).toBe('ETIMEDOUT');
    expect(rows(lab, 0, 1)).toEqual(before);
    expect(await gpuPtes(lab, f, 0, 1)).toEqual(ptes);
    await checkInvariants(lab.fs);
    expectBytes(await f.read(0, 2 * P), pattern(0, 2 * P, 2), 'read run again');
    await f.fsync();
    expectBytes(diskBytes(lab.dir, NAME), pattern(0, 2 * P, 2), 'disk');
  });

  it('writeback that fails keeps the pages dirty: nothing is marked clean that is not on disk', async () => {
    const { lab, f, inject } = await setup(policy, P);
    await f.write(0, pattern(0, 2 * P, 1));
    inject.failNext('pwrite');
    const e = await rejection(f.fsync());
    expect(e.code).toBe('EIO');
    expect(f.nrDirty).toBe(2);
    expectBytes(diskBytes(lab.dir, NAME), new Uint8Array(2 * P), 'disk after the failed fsync');
    await f.fsync();
    expect(f.nrDirty).toBe(0);
    expectBytes(diskBytes(lab.dir, NAME), pattern(0, 2 * P, 1), 'disk after fsync ran again');
  });

  it('a failed fdatasync is reported; the next fsync syncs the data again', async () => {
    const { lab, f, inject } = await setup(policy, P);
    await f.write(0, pattern(0, P, 1));
    inject.failNext('fdatasync');
    expect((await rejection(f.fsync())).code).toBe('EIO');
    await f.fsync();
    expectBytes(diskBytes(lab.dir, NAME), pattern(0, P, 1), 'disk');
  });

  it('a short write to the backing file is completed', async () => {
    const { lab, f, inject } = await setup(policy, P);
    await f.write(0, pattern(0, 3 * P, 1));
    inject.failNext('pwrite-short');
    await f.fsync();
    expect(inject.fired['pwrite-short']).toBe(1);
    expectBytes(diskBytes(lab.dir, NAME), pattern(0, 3 * P, 1), 'disk');
  });

  it('writeback of device entries: a failed write keeps that entry to be written back, the rest land', async () => {
    const { lab, f, inject } = await setup(policy, P);
    await f.write(0, pattern(0, 2 * P, 1));
    await f.fsync();
    await f.deviceWrite(0, 2 * P, 2);
    await lab.fs.dropCaches(); // mirror: S -> E; migrate: E already
    expect(rows(lab, 0, 1).every((r) => /^E\/-\/rw\/\d+\/true$/.test(r))).toBe(true);
    const before = rows(lab, 0, 1);
    inject.failNext('pwrite');
    expect((await rejection(f.fsync())).code).toBe('EIO');
    // Page 0's write failed: it is E rw again with its DIRTY bit; page 1 was written (E ro).
    expect(rows(lab, 0, 0)).toEqual(before.slice(0, 1));
    expect(rows(lab, 1, 1)[0]).toMatch(/^E\/-\/ro\/\d+\/false$/);
    const want = pattern(0, 2 * P, 1);
    want.set(pattern(P, P, 2), P);
    expectBytes(diskBytes(lab.dir, NAME), want, 'disk: page 1 written, page 0 not yet');
    await checkInvariants(lab.fs);
    await f.fsync();
    expectBytes(diskBytes(lab.dir, NAME), pattern(0, 2 * P, 2), 'disk after fsync ran again');
  });

  it('an eviction whose copy-back fails (migrate: its copy home) leaves the frames owned and mapped', async () => {
    const { lab, f, inject } = await setup(policy, P, { devicePages: 4 });
    await f.write(0, pattern(0, 8 * P, 1));
    await f.fsync();
    await f.deviceWrite(0, 4 * P, 2);
    const before = rows(lab, 0, 3);
    const ptes = await gpuPtes(lab, f, 0, 3);
    const hostPages = lab.fs.vmstat().nr_file_pages;
    inject.failNext('copy-from-device');
    expect((await rejection(f.deviceRead(4 * P, 4 * P))).code).toBe('ETIMEDOUT');
    expect(rows(lab, 0, 3)).toEqual(before);
    expect(lab.fs.vmstat().nr_file_pages).toBe(hostPages); // a page allocated to go home is given back
    expect(await gpuPtes(lab, f, 0, 3)).toEqual(ptes);
    expect(lab.fs.vmstat().device_evictions).toBe(0);
    await checkInvariants(lab.fs);
    expectBytes(await f.deviceRead(4 * P, 4 * P), pattern(4 * P, 4 * P, 1), 'devread run again');
    const want = pattern(0, 8 * P, 1);
    want.set(pattern(0, 4 * P, 2));
    expectBytes(await f.read(0, 8 * P), want, 'read');
  });

  it('a device entry whose eviction cannot write it to disk stays on the device', async () => {
    // migrate moves an evicted page home while the host has a free page: fill the host first.
    const { lab, f, inject } = await setup(policy, P, { devicePages: 2, hostPages: migrate ? 4 : 16 });
    await f.write(0, pattern(0, 4 * P, 1));
    await f.fsync();
    await f.deviceWrite(0, 2 * P, 2);
    await lab.fs.dropCaches(); // E rw: the device holds the only copy
    if (migrate) {
      const g = await lab.fs.open('other', { create: true });
      await g.write(0, pattern(0, 4 * P, 3)); // four dirty pages: no free host page
    }
    const before = rows(lab, 0, 1);
    inject.failNext('pwrite');
    expect((await rejection(f.deviceRead(2 * P, 2 * P))).code).toBe('EIO');
    expect(rows(lab, 0, 1)).toEqual(before);
    await checkInvariants(lab.fs);
    expectBytes(await f.read(0, 2 * P), pattern(0, 2 * P, 2), 'read of the device entries');
  });

  it('a refused page_mkwrite of an mmap store (SIGBUS) leaves the page clean and read-only', async () => {
    const { lab, f, inject } = await setup(policy, P);
    await f.write(0, pattern(0, P, 1));
    await f.fsync();
    const vma = f.mmap();
    await vma.load(0, 1);
    const before = rows(lab, 0, 0);
    expect(before[0]).toMatch(/^C\/ro\//);
    inject.failNext('page_mkwrite');
    const e = await rejection(vma.store(0, pattern(0, 8, 2)));
    expect(e.code).toBe('ENOSPC');
    expect(e.message).toMatch(/SIGBUS/);
    expect(rows(lab, 0, 0)).toEqual(before);
    await vma.store(0, pattern(0, 8, 2));
    const want = pattern(0, P, 1);
    want.set(pattern(0, 8, 2));
    expectBytes(await f.read(0, P), want, 'read after the store ran again');
  });

  it('a refused page_mkwrite of a device write fails that page (EFAULT); the others land', async () => {
    const { lab, f, inject } = await setup(policy, P);
    await f.write(0, pattern(0, 2 * P, 1));
    await f.fsync();
    inject.failNext('page_mkwrite');
    const e = await rejection(f.deviceWrite(0, 2 * P, 2));
    expect(e.code).toBe('EFAULT');
    expect(e.message).toMatch(/^SIGBUS: device write to page 0 of f refused/);
    expect(lab.fs.vmstat().device_mkwrite_refused).toBe(1);
    const want = pattern(0, 2 * P, 2);
    want.set(pattern(0, P, 1));
    expectBytes(await f.read(0, 2 * P), want, 'page 0 refused, page 1 written');
    await checkInvariants(lab.fs);
  });

  it('a failed frame allocation (ENOMEM) changes nothing', async () => {
    const { lab, f, inject } = await setup(policy, P);
    await f.write(0, pattern(0, 2 * P, 1));
    await f.fsync();
    const before = rows(lab, 0, 1);
    inject.failNext('frame-alloc');
    const e = await rejection(f.deviceWrite(0, 2 * P, 2));
    expect(e.code).toBe('ENOMEM');
    expect(rows(lab, 0, 1)).toEqual(before);
    expect(lab.dm.pool.freeCount).toBe(16);
    await checkInvariants(lab.fs);
    await f.deviceWrite(0, 2 * P, 2);
    expectBytes(await f.read(0, 2 * P), pattern(0, 2 * P, 2), 'read');
  });

  it('a failed replay launch (EGPU) leaves granted pages the device never wrote: their copy-back is spared', async () => {
    const { lab, f, inject } = await setup(policy, P);
    await f.write(0, pattern(0, 2 * P, 1));
    await f.fsync();
    await f.deviceWrite(0, P, 2); // page 0: written by the device
    inject.failNext('kernel-launch', 1); // the launch after the fault service of page 1
    const e = await rejection(f.deviceWrite(0, 2 * P, 3));
    expect(e.code).toBe('EGPU');
    expect(e.message).toMatch(/launch devwrite/);
    // Both pages writable on the device; only page 0's DIRTY bit is set (the GPU says so).
    expect(await gpuPtes(lab, f, 0, 1)).toEqual([
      expect.stringMatching(/^rw\/\d+\/true$/),
      expect.stringMatching(/^rw\/\d+\/false$/),
    ]);
    await checkInvariants(lab.fs);
    const v = lab.fs.vmstat();
    // The first launch wrote page 0 (already writable); page 1 faulted, was granted, never written.
    const want = pattern(0, 2 * P, 1);
    want.set(pattern(0, P, 3));
    expectBytes(await f.read(0, 2 * P), want, 'read');
    if (migrate) {
      // read(2) bounces both; fsync writes only the page the device wrote
      await f.fsync();
      const d = delta(v, lab.fs.vmstat());
      expect(d.device_bounce_reads).toBe(2);
      expect(d.device_bounce_writebacks).toBe(1);
      expect(d.device_copybacks_spared).toBe(1);
      expectBytes(diskBytes(lab.dir, NAME), want, 'disk');
      return;
    }
    const d = delta(v, lab.fs.vmstat());
    expect(d.device_copybacks).toBe(1);
    expect(d.device_copybacks_spared).toBe(1);
    expect(d.device_bytes_d2h).toBe(P);
  });

  it('an invalidation that races with fault service makes that fault retry; the data is right', async () => {
    const { lab, f, inject } = await setup(policy, P);
    await f.write(0, pattern(0, 2 * P, 1));
    await f.fsync();
    const v = lab.fs.vmstat();
    inject.failNext('race-invalidate');
    await f.deviceWrite(0, 2 * P, 2);
    const d = delta(v, lab.fs.vmstat());
    expect(d.device_mmu_interval_retries).toBe(1);
    expect(d.device_faults_retried).toBe(1);
    expect(d.device_faults_unique).toBe(3); // two pages, one of them faulting again
    expect(d.device_replays).toBe(2);
    await checkInvariants(lab.fs);
    expectBytes(await f.read(0, 2 * P), pattern(0, 2 * P, 2), 'read');
  });

  it('fault-around maps only uptodate pages: a 1-byte mmap read takes nothing more from the device', async () => {
    const { lab, f } = await setup(policy, P, { hostPages: 64, devicePages: 64 });
    await f.write(0, pattern(0, 32 * P, 1));
    await f.fsync();
    await f.deviceWrite(0, 32 * P, 2);
    const v = lab.fs.vmstat();
    const vma = f.mmap();
    expectBytes(await vma.load(5 * P, 1), pattern(5 * P, 1, 2), 'the byte');
    expect(delta(v, lab.fs.vmstat()).device_copybacks).toBe(1);
    const w = lab.fs.vmstat();
    await f.deviceWrite(6 * P, 26 * P, 3);
    expect(delta(w, lab.fs.vmstat()).device_write_faults).toBe(0);
    await checkInvariants(lab.fs);
  });

  it('two mounts on one device: eviction gives each frame back to the mount that owns it', async () => {
    const dm = await DeviceMemory.create(gpu, { devicePages: 4, pageSize: P });
    try {
      const a = await mountDevice(gpu, { policy, pageSize: P, hostPages: 16, devicePages: 4, dm });
      const b = await mountDevice(gpu, { policy, pageSize: P, hostPages: 16, devicePages: 4, dm });
      labs.push(a, b);
      const fa = await a.fs.open(NAME, { create: true });
      const fb = await b.fs.open(NAME, { create: true });
      await fa.write(0, pattern(0, 4 * P, 1));
      await fb.write(0, pattern(0, 4 * P, 3));
      await fa.deviceWrite(0, 4 * P, 2); // every frame: mount a's, dirty
      await fb.deviceRead(0, 4 * P); // evicts them all
      expect(a.fs.vmstat().device_evictions).toBe(4);
      expect(rows(a, 0, 3)).toEqual(Array.from({ length: 4 }, () => 'D/-/-/null/false'));
      expectBytes(await fa.read(0, 4 * P), pattern(0, 4 * P, 2), "mount a's pages");
      await checkInvariants(a.fs);
      await checkInvariants(b.fs);
      for (const l of labs.splice(0)) await l.cleanup();
    } finally {
      dm.destroy();
    }
  });
});

describe.each([4096, 65536])('mirror, page size %i: eviction and the mmu_interval sequence', (P) => {
  it('eviction changes a host page only under its page lock: a locked page is kept on the device', async () => {
    const { lab, f } = await setup('mirror', P);
    await f.write(0, pattern(0, 2 * P, 1));
    await f.fsync();
    await f.deviceWrite(0, 2 * P, 2);
    const page0 = f.mapping.i_pages.get(0) as Page;
    const frames = [0, 1].map((i) => lab.fs.snapshot(NAME, i, i)[0].frame!);
    expect(trylock_page(page0)).toBe(true); // someone holds page 0 (a read in progress, say)
    let evicted: number[];
    try {
      evicted = (await lab.dm.evictFrames(frames)).map((v) => v.index);
    } finally {
      unlock_page(page0);
    }
    expect(evicted).toEqual([1]);
    expect(rows(lab, 0, 0)[0]).toBe(`S/-/rw/${frames[0]}/true`); // kept as it was
    expect(rows(lab, 1, 1)[0]).toBe('D/-/-/null/false'); // copied back under its lock
    await checkInvariants(lab.fs);
    expectBytes(await f.read(0, 2 * P), pattern(0, 2 * P, 2), 'read');
  });

  it('write-protect and revoke bump the mmu_interval sequence for every page asked, installed or not', async () => {
    const { lab, f } = await setup('mirror', P);
    await f.write(0, pattern(0, 2 * P, 1));
    await f.deviceRead(0, P); // page 0 installed read-only; page 1 not on the device
    const space = lab.dm.space(f.mapping.id);
    let seq = space.readBegin();
    await lab.dm.revoke(space, [1]);
    expect([...space.readRetry(seq, [0, 1])]).toEqual([1]);
    seq = space.readBegin();
    await lab.dm.protect(space, [1]);
    expect([...space.readRetry(seq, [0, 1])]).toEqual([1]);
  });
});

describe.each([4096, 65536])("migrate's moves, page size %i: a failed step changes nothing", (P) => {
  it('a migration to the device whose copy fails leaves A in the page cache, dirty', async () => {
    const { lab, f, inject } = await setup('migrate', P);
    await f.write(0, pattern(0, 4 * P, 1)); // dirty: the host holds the only copy
    const before = rows(lab, 0, 3);
    inject.failNext('copy-to-device');
    expect((await rejection(f.deviceRead(0, 4 * P))).code).toBe('EGPU');
    expect(rows(lab, 0, 3)).toEqual(before);
    expect(f.nrDirty).toBe(4);
    expect(lab.dm.pool.freeCount).toBe(16);
    await checkInvariants(lab.fs);
    expectBytes(await f.deviceRead(0, 4 * P), pattern(0, 4 * P, 1), 'devread run again');
    expect(rows(lab, 0, 3).every((r) => r.startsWith('E/-/ro/'))).toBe(true);
    await f.fsync();
    expectBytes(diskBytes(lab.dir, NAME), pattern(0, 4 * P, 1), 'disk: the moved dirty pages written');
  });

  it("a migration home whose copy fails leaves the page on the device, A' mapped with its DIRTY bit", async () => {
    const { lab, f, inject } = await setup('migrate', P);
    await f.write(0, pattern(0, 2 * P, 1));
    await f.fsync();
    await f.deviceWrite(0, 2 * P, 2);
    const before = rows(lab, 0, 1);
    const ptes = await gpuPtes(lab, f, 0, 1);
    const vma = f.mmap();
    inject.failNext('copy-from-device');
    expect((await rejection(vma.load(0, 4))).code).toBe('ETIMEDOUT');
    expect(rows(lab, 0, 1)).toEqual(before);
    expect(await gpuPtes(lab, f, 0, 1)).toEqual(ptes);
    expect(lab.fs.vmstat().nr_file_pages).toBe(0);
    await checkInvariants(lab.fs);
    expectBytes(await vma.load(0, 2 * P), pattern(0, 2 * P, 2), 'mmap load run again');
  });

  it('a bounce write that fails changes nothing: its read of a partial page, or its copy', async () => {
    const { lab, f, inject } = await setup('migrate', P);
    await f.write(0, pattern(0, 2 * P, 1));
    await f.fsync();
    await f.deviceWrite(0, 2 * P, 2);
    const before = rows(lab, 0, 1);
    const ptes = await gpuPtes(lab, f, 0, 1);
    inject.failNext('copy-from-device'); // the partial page is read first
    expect((await rejection(f.write(8, pattern(8, 8, 3)))).code).toBe('ETIMEDOUT');
    inject.failNext('copy-to-device');
    expect((await rejection(f.write(P, pattern(P, P, 3)))).code).toBe('EGPU');
    expect(rows(lab, 0, 1)).toEqual(before);
    expect(await gpuPtes(lab, f, 0, 1)).toEqual(ptes);
    await checkInvariants(lab.fs);
    expectBytes(await f.read(0, 2 * P), pattern(0, 2 * P, 2), 'read: neither write landed');
    await f.write(8, pattern(8, 8, 3));
    await f.write(P, pattern(P, P, 3));
    const want = pattern(0, 2 * P, 2);
    want.set(pattern(8, 8, 3), 8);
    want.set(pattern(P, P, 3), P);
    expectBytes(await f.deviceRead(0, 2 * P), want, 'devread after the writes ran again');
  });

  it('a bounce read that fails changes nothing', async () => {
    const { lab, f, inject } = await setup('migrate', P);
    await f.write(0, pattern(0, 2 * P, 1));
    await f.fsync();
    await f.deviceRead(0, 2 * P);
    const before = rows(lab, 0, 1);
    inject.failNext('copy-from-device');
    expect((await rejection(f.read(0, 2 * P))).code).toBe('ETIMEDOUT');
    expect(rows(lab, 0, 1)).toEqual(before);
    expect(lab.fs.vmstat().nr_file_pages).toBe(0);
    await checkInvariants(lab.fs);
    expectBytes(await f.read(0, 2 * P), pattern(0, 2 * P, 1), 'read run again');
  });
});

describe.each(MATRIX)('ops that fail half way change nothing (%s), page size %i', (policy, P) => {
  it('a truncate whose partial page cannot be brought back loses nothing past the new EOF', async () => {
    // 3 host pages: bringing the device entry at the new EOF home takes a page, and reclaim then
    // writes back the dirty page past the new EOF; the copy back fails.
    const { lab, f, inject } = await setup(policy, P, { hostPages: 3, devicePages: 8 });
    await f.write(0, pattern(0, 4 * P, 1));
    await f.fsync();
    await f.deviceWrite(P, P, 5); // page 1: on the device, written there
    await lab.fs.dropCaches();
    await f.write(3 * P, pattern(3 * P, P, 2)); // page 3: dirty on the host
    await f.read(0, 100);
    await f.read(2 * P, 100);
    inject.failNext('copy-from-device');
    expect((await rejection(f.truncate(P + 100))).code).toBe('ETIMEDOUT');
    expect(f.size).toBe(4 * P);
    await checkInvariants(lab.fs);
    const want = pattern(0, 4 * P, 1);
    want.set(pattern(P, P, 5), P);
    want.set(pattern(3 * P, P, 2), 3 * P);
    expectBytes(await f.read(0, 4 * P), want, 'the file after the failed truncate');
    await f.truncate(P + 100);
    expectBytes(await f.read(0, 4 * P), want.subarray(0, P + 100), 'after the truncate ran again');
  });

  it('a write(2) that fails in its batch leaves no zero page where the disk has data', async () => {
    const { lab, f, inject } = await setup(policy, P);
    await f.write(0, pattern(0, 2 * P, 1));
    await f.fsync();
    await lab.fs.dropCaches();
    inject.failNext('pread'); // the read of page 1, which the write covers in part
    expect((await rejection(f.write(0, pattern(0, P + 100, 2)))).code).toBe('EIO');
    expect(rows(lab, 0, 1)).toEqual(['-/-/-/null/false', '-/-/-/null/false']);
    await checkInvariants(lab.fs);
    expectBytes(await f.read(0, 2 * P), pattern(0, 2 * P, 1), 'the file after the failed write');
    await f.write(1000, pattern(1000, 8, 3));
    await f.fsync();
    await lab.fs.dropCaches();
    const want = pattern(0, 2 * P, 1);
    want.set(pattern(1000, 8, 3), 1000);
    expectBytes(await f.read(0, 2 * P), want, 'the file after a later write and fsync');
  });
});

describe.each([4096, 65536])('migrate, page size %i: a raced upgrade meets an eviction that fails', (P) => {
  it('the grant not installed yet comes back with the PTE: record and page table agree', async () => {
    // One frame, batch 1: page 0's upgrade to rw loses the race (pending), page 1's fault then
    // evicts page 0's frame, and that eviction's copy fails.
    const { lab, f, inject } = await setup('migrate', P, { devicePages: 1, batchSize: 1 });
    await f.write(0, pattern(0, 2 * P, 1));
    await f.deviceRead(0, P);
    inject.failNext('race-invalidate', 1);
    inject.failNext('copy-from-device');
    expect((await rejection(f.deviceWrite(0, 2 * P, 2))).code).toBe('ETIMEDOUT');
    await checkInvariants(lab.fs);
    await f.deviceWrite(0, 2 * P, 2);
    expectBytes(await f.read(0, 2 * P), pattern(0, 2 * P, 2), 'read after the devwrite ran again');
  });
});

describe.each(MATRIX)('device loss (%s), page size %i: only the device-held data goes', (policy, P) => {
  const migrate = policy === 'migrate';
  /** A mount on a GPU of its own; with `lossOnFire`, the GPU is destroyed when a fault fires. */
  async function lossSetup(lossOnFire = false) {
    const own = await openGpu(5_000);
    ownGpus.push(own);
    const lab = await setup(policy, P, { gpu: own });
    if (lossOnFire) lab.inject.options.onFire = () => own.destroy();
    return lab;
  }

  /** Pages 0-1 dirty on the host (newer than disk), 2-3 clean; the device then writes 0-3. */
  async function fileWithNewerHostData(f: Awaited<ReturnType<typeof setup>>['f']) {
    await f.write(0, pattern(0, 4 * P, 1));
    await f.fsync();
    await f.write(0, pattern(0, 2 * P, 2));
  }
  const hostData = () => {
    const want = pattern(0, 4 * P, 1);
    want.set(pattern(0, 2 * P, 2));
    return want;
  };

  it('lost mid-kernel (at the replay launch): EIO naming the pages; host data newer than disk is kept', async () => {
    const { lab, f, inject } = await lossSetup();
    await fileWithNewerHostData(f);
    inject.failNext('device-lost', 1);
    const e = await rejection(f.deviceWrite(0, 4 * P, 3));
    expect(e.code).toBe('EIO');
    expect(e.message).toMatch(/^device lost: dirty data of pages 0-3 of f lost/);
    if (migrate) {
      // The pages had moved to the device: pages 0-1's newer data went with it; the disk has the rest.
      expect(rows(lab, 0, 3)).toEqual(Array.from({ length: 4 }, () => '-/-/-/null/false'));
      expectBytes(await f.read(0, 4 * P), pattern(0, 4 * P, 1), 'read after the loss: the disk');
      await lab.fs.unmount();
      return;
    }
    expect(rows(lab, 0, 3)).toEqual([
      'D/-/-/null/false',
      'D/-/-/null/false',
      'C/-/-/null/false',
      'C/-/-/null/false',
    ]);
    expectBytes(await f.read(0, 4 * P), hostData(), 'read after the loss');
    expect((await rejection(f.deviceRead(0, 4))).code).toBe('ENODEV');
    await lab.fs.unmount();
    expectBytes(diskBytes(lab.dir, NAME), hostData(), 'disk after unmount');
  });

  it('lost in the middle of fault service: EIO, the host keeps its data (migrate: what had not moved yet)', async () => {
    const { lab, f, inject } = await lossSetup(true);
    await fileWithNewerHostData(f);
    inject.failNext('race-invalidate'); // fires between service and the PTE install
    const e = await rejection(f.deviceWrite(0, 4 * P, 3));
    expect(e.code).toBe('EIO');
    expect(e.message).toMatch(/lost/);
    // migrate: service had moved the whole batch to the device before the install: all four
    // pages' data is the disk's now (a kernel was running on them: all four are named lost).
    const want = migrate ? pattern(0, 4 * P, 1) : hostData();
    if (migrate) expect(e.message).toMatch(/pages 0-3\b/);
    expectBytes(await f.read(0, 4 * P), want, 'read after the loss');
    await lab.fs.unmount();
    expectBytes(diskBytes(lab.dir, NAME), want, 'disk after unmount');
  });

  it('lost during a copy-back: EIO naming the pages the device wrote; the rest is intact', async () => {
    const { lab, f, inject } = await lossSetup(true);
    await f.write(0, pattern(0, 4 * P, 1));
    await f.fsync();
    await f.deviceWrite(2 * P, 2 * P, 3); // pages 2-3: only on the device
    await f.write(0, pattern(0, P, 2)); // page 0: newer on the host
    inject.failNext('copy-from-device');
    const e = await rejection(f.read(2 * P, 2 * P));
    expect(e.code).toBe('EIO');
    expect(e.message).toMatch(/^device lost: dirty data of pages 2-3 of f lost/);
    const want = pattern(0, 4 * P, 1);
    want.set(pattern(0, P, 2));
    expectBytes(await f.read(0, 4 * P), want, 'read after the loss: pages 2-3 as the disk has them');
    await lab.fs.unmount();
    expectBytes(diskBytes(lab.dir, NAME), want, 'disk after unmount');
  });
});
