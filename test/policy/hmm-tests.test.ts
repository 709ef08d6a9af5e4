/**
 * Cases of the kernel's tools/testing/selftests/mm/hmm-tests.c that become meaningful for file pages
 * once a page can move to the device (Glisse's migrate scheme), ported under their hmm-tests names
 * and run under each device policy (mirror, migrate) and page size. hmm-tests "migrates" a buffer
 * with an ioctl; here the device takes the pages by touching them (a devread of the range), which
 * under migrate moves them (A freed) and under mirror copies them (A stays). What each case checks
 * under each scheme is said in the case. docs/hmm-tests.md maps all 38 hmm-tests cases to the tests.
 *
 * hmm-tests' second device (the hmm2 fixture) has no counterpart (one device per mount): snapshot
 * reads the states with one device; double_map maps the file twice on the CPU instead.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { File } from '../../src/fs/hmmfs.ts';
import type { GpuDevice } from '../../src/gpu/device.ts';
import { FaultInjector } from '../../src/inject/inject.ts';
import { checkInvariants } from '../../src/policy/invariants.ts';
import { rejection } from '../helpers/rejection.ts';
import {
  atomicTotals,
  counters,
  type DeviceLab,
  delta,
  expectBytes,
  MATRIX,
  mountDevice,
  openGpu,
  pattern,
  u32,
} from './helpers.ts';

const N = 16;
const NAME = 'hmm.dat';
const NTIMES = 10;

describe.each(MATRIX)('hmm-tests migrate cases on file pages (%s), page size %i', (policy, P) => {
  const migrate = policy === 'migrate';
  let gpu: GpuDevice;
  let lab: DeviceLab | null = null;

  beforeAll(async () => {
    gpu = await openGpu();
  });
  afterAll(() => {
    if (!gpu.lost) gpu.destroy();
  });
  afterEach(async () => {
    await lab?.cleanup();
    lab = null;
  });

  /** A file of `pages` pages of `tag`, on disk and out of the page cache. */
  async function setup(pages = N, o: { inject?: FaultInjector } = {}) {
    lab = await mountDevice(gpu, { policy, pageSize: P, hostPages: 64, devicePages: 64, inject: o.inject });
    const f = await lab.fs.open(NAME, { create: true });
    await f.write(0, pattern(0, pages * P, 1));
    await f.fsync();
    await lab.fs.dropCaches();
    return { lab, f, dm: lab.dm };
  }
  const states = (first: number, last: number) =>
    lab!.fs.snapshot(NAME, first, last).map((r) => `${r.host}/${r.dev}/${r.cpu}`);
  const hostPages = () => lab!.fs.vmstat().nr_file_pages;

  /** "Migrate to the device": the device touches every page of [first, first + n). */
  async function migrateToDevice(
    f: File,
    first: number,
    n: number,
    tag = 1,
  ): Promise<Record<string, number>> {
    const before = counters(lab!.dm.counters);
    expectBytes(await f.deviceRead(first * P, n * P), pattern(first * P, n * P, tag), 'what the device read');
    return delta(before, lab!.dm.counters);
  }

  it('migrate', async () => {
    const { f } = await setup();
    const vma = f.mmap();
    await vma.load(0, N * P); // the CPU has every page mapped
    const d = await migrateToDevice(f, 0, N);
    expect(d.faultsUnique).toBe(N); // cpages: every page
    expect(d.bytesHostToDevice).toBe(N * P);
    // migrate: every page moved, no host memory held; mirror: copied, A stays
    expect(hostPages()).toBe(migrate ? 0 : N);
    expect(states(0, N - 1).every((s) => s === (migrate ? 'E/ro/-' : 'C/ro/ro'))).toBe(true);
    await checkInvariants(lab!.fs);
  });

  it('migrate_fault', async () => {
    const { f } = await setup();
    await migrateToDevice(f, 0, N);
    const vma = f.mmap();
    // Fault half the pages back and check them: migrate moves them home; mirror reads A.
    const before = counters(lab!.dm.counters);
    expectBytes(await vma.load(0, (N / 2) * P), pattern(0, (N / 2) * P, 1), 'CPU load of half');
    expect(delta(before, lab!.dm.counters).bytesDeviceToHost).toBe(migrate ? (N / 2) * P : 0);
    // Migrate the mix of host and device pages to the device again.
    const d = await migrateToDevice(f, 0, N);
    expect(d.faultsUnique).toBe(migrate ? N / 2 : 0);
    expect(d.bytesHostToDevice).toBe(migrate ? (N / 2) * P : 0);
    await checkInvariants(lab!.fs);
  });

  it('migrate_release', async () => {
    const { f } = await setup();
    await migrateToDevice(f, 0, N);
    // Release device memory (the device goes: detach), then fault the pages back and check them.
    await lab!.policy.detach();
    expect(states(0, N - 1).every((s) => s.split('/')[1] === '-' && !s.startsWith('E'))).toBe(true);
    expectBytes(await f.mmap().load(0, N * P), pattern(0, N * P, 1), 'CPU load after release');
    expect((await rejection(f.deviceRead(0, 4))).code).toBe('ENODEV');
    await checkInvariants(lab!.fs);
  });

  it('migrate_multiple', async () => {
    const pages = 4;
    const { f, dm } = await setup(pages);
    for (let c = 0; c < NTIMES; c++) {
      const tag = 10 + c;
      await f.write(0, pattern(0, pages * P, tag)); // initialize the buffer in system memory
      const d = await migrateToDevice(f, 0, pages, tag);
      expect(d.faultsUnique, `round ${c}`).toBe(pages);
      const before = counters(dm.counters);
      // Migrate back to system memory (a CPU fault on every page) and check.
      const vma = f.mmap();
      expectBytes(await vma.load(0, pages * P), pattern(0, pages * P, tag), `round ${c}: CPU load`);
      await vma.unmap();
      expect(delta(before, dm.counters).bytesDeviceToHost).toBe(migrate ? pages * P : 0);
    }
    await checkInvariants(lab!.fs);
  });

  it('migrate_partial_unmap_fault', async () => {
    for (const off of [0, N / 4, N / 2]) {
      const { f } = await setup();
      const vma = f.mmap(N * P);
      await vma.load(0, N * P);
      await migrateToDevice(f, 0, N);
      await vma.munmap(off * P, (N / 2) * P);
      const hole = (i: number) => i >= off && i < off + N / 2;
      // Fault back the pages still mapped and check them; the hole stays where it was.
      for (let i = 0; i < N; i++) {
        if (hole(i)) continue;
        expectBytes(await vma.load(i * P, P), pattern(i * P, P, 1), `page ${i}`);
      }
      expect((await rejection(vma.load(off * P, 4))).code).toBe('EFAULT'); // SIGSEGV in the hole
      const s = states(0, N - 1);
      for (let i = 0; i < N; i++) {
        const want = hole(i) ? (migrate ? 'E/ro/-' : 'C/ro/-') : migrate ? 'C/-/ro' : 'C/ro/ro';
        expect(s[i], `offset ${off}: page ${i}`).toBe(want);
      }
      await checkInvariants(lab!.fs);
      await lab!.cleanup();
      lab = null;
    }
  });

  it('migrate_remap_fault', async () => {
    for (const before of [false, true]) {
      for (const dontUnmap of [false, true]) {
        const { f } = await setup();
        const old = f.mmap(N * P);
        await old.load(0, N * P);
        let moved = old;
        // mremap of a file mapping: a new mapping of the same pages; the old one is gone, or
        // (MREMAP_DONTUNMAP) still there with no pages mapped.
        const remap = async () => {
          moved = f.mmap(N * P);
          if (dontUnmap) await old.munmap(0, N * P);
          else await old.unmap();
        };
        if (before) await remap();
        await migrateToDevice(f, 0, N);
        if (!before) await remap();
        expectBytes(
          await moved.load(0, N * P),
          pattern(0, N * P, 1),
          `before ${before} dontunmap ${dontUnmap}`,
        );
        expect(states(0, N - 1).every((s) => s.endsWith('/ro'))).toBe(true);
        await checkInvariants(lab!.fs);
        await lab!.cleanup();
        lab = null;
      }
    }
  });

  /** Map `pages` zero pages exclusively for device access (device atomics); check what the device did. */
  async function exclusive(pages: number, inject?: FaultInjector) {
    lab = await mountDevice(gpu, { policy, pageSize: P, hostPages: 64, devicePages: 64, inject });
    const f = await lab.fs.open(NAME, { create: true });
    await f.write(0, new Uint8Array(pages * P));
    const words = (pages * P) / 4;
    const once = atomicTotals(words, 16_384, 16);
    await f.deviceAtomicInc(0, words, 16_384, 16);
    expect(u32(await f.deviceRead(0, pages * P))).toEqual(once);
    return { lab, f, words, once };
  }

  it('exclusive', async () => {
    const pages = 2;
    const { lab, f, words, once } = await exclusive(pages);
    // Fault pages back to system memory and check them, incrementing each word (ptr[i]++).
    const vma = f.mmap();
    const got = u32(await vma.load(0, pages * P));
    expect(got).toEqual(once);
    for (let w = 0; w < words; w++) got[w]++;
    await vma.store(0, new Uint8Array(got.buffer));
    expect(u32(await vma.load(0, pages * P))).toEqual(once.map((x) => x + 1));
    // Check atomic access revoked: the next atomic run faults on every page again.
    const before = counters(lab.dm.counters);
    await f.deviceAtomicInc(0, words, 16_384, 16);
    expect(delta(before, lab.dm.counters).faultsUnique).toBe(pages);
    expect(u32(await f.read(0, pages * P))).toEqual(once.map((x) => 2 * x + 1));
    await checkInvariants(lab.fs);
  });

  it('exclusive_mprotect', async () => {
    const pages = 2;
    const inject = new FaultInjector();
    const { lab, f, once } = await exclusive(pages, inject);
    // mprotect(PROT_READ) for a file: writeback write-protects A', and the filesystem refuses writes.
    await f.fsync();
    expect(lab.fs.snapshot(NAME, 0, pages - 1).every((r) => r.dev === 'ro')).toBe(true);
    for (let i = 0; i < pages; i++) inject.failNext('page_mkwrite', i);
    // A device write is refused (hmm-tests: EPERM; here the SIGBUS-like EFAULT), nothing written.
    const e = await rejection(f.deviceWrite(0, pages * P, 5));
    expect(e.code).toBe('EFAULT');
    expect(u32(await f.read(0, pages * P))).toEqual(once);
    await checkInvariants(lab.fs);
  });

  it('snapshot', async () => {
    lab = await mountDevice(gpu, { policy, pageSize: P, hostPages: 64, devicePages: 64 });
    const f = await lab.fs.open(NAME, { create: true });
    await f.truncate(7 * P); // a hole of 7 pages
    const vma = f.mmap();
    expect(u32(await vma.load(2 * P, 4))[0]).toBe(0); // page 2: a read-only zero page
    await vma.store(3 * P, pattern(3 * P, 4, 2)); // page 3: read-only once written back
    await f.fsync();
    await vma.store(4 * P, pattern(4 * P, 4, 3)); // page 4: read-write
    await f.deviceWrite(5 * P, P, 4); // page 5: on the device, writable
    await f.deviceRead(6 * P, P); // page 6: on the device, read-only
    // Snapshot the page states without faulting in anything.
    const before = { vm: lab.fs.vmstat(), dev: counters(lab.dm.counters) };
    const s = states(0, 6);
    expect(s.slice(0, 5)).toEqual(['-/-/-', '-/-/-', 'C/-/ro', 'C/-/ro', 'D/-/rw']);
    expect(s.slice(5)).toEqual(migrate ? ['E/rw/-', 'E/ro/-'] : ['S/rw/-', 'C/ro/-']);
    expect(lab.fs.vmstat()).toEqual(before.vm);
    expect(counters(lab.dm.counters)).toEqual(before.dev);
    await checkInvariants(lab.fs);
  });

  it('double_map', async () => {
    const pages = 6;
    const { f } = await setup(pages);
    const a = f.mmap();
    const b = f.mmap();
    await a.load(0, pages * P);
    await b.load(0, pages * P); // two read-only mappings of the same pages
    let d = await migrateToDevice(f, 0, pages);
    expect(d.faultsUnique).toBe(pages);
    d = await migrateToDevice(f, 0, pages); // the device reads them again: nothing faults
    expect(d.faultsRaw).toBe(0);
    // The device takes them for writing: every CPU mapping of every page goes (both mappings).
    const unmapped = lab!.fs.vmstat().pgunmap;
    await f.deviceWrite(0, pages * P, 1);
    // mirror: the write fault unmaps both mappings; migrate: the read fault did already
    expect(lab!.fs.vmstat().pgunmap - unmapped).toBe(migrate ? 0 : 2 * pages);
    expect(states(0, pages - 1).every((s) => s.endsWith('/rw/-'))).toBe(true);
    d = await migrateToDevice(f, 0, pages);
    expect(d.faultsRaw).toBe(0);
    expectBytes(await b.load(0, pages * P), pattern(0, pages * P, 1), 'the second mapping');
    await checkInvariants(lab!.fs);
  });
});
