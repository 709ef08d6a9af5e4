/**
 * The file-page behaviours of the kernel's tools/testing/selftests/mm/hmm-tests.c (file_read,
 * file_write, exclusive, and file counterparts of anon_read_multiple; the migrate_* cases are hmm-tests.test.ts), under each
 * device policy (Kara's mirror, Glisse's migrate) on the real adapter: set up a file, do one device
 * operation, check the data, the faults and the bytes copied (the device layer's counters and the
 * run's own), and the page states (fs.snapshot, as test_hmm's SNAPSHOT). One behaviour a test, for
 * each policy and page sizes 4 KiB and 64 KiB; where a step means something else under migrate
 * (the page moves instead of being copied), the test says what it checks for each.
 * N = 32 pages: at 4 KiB that is two whole fault-around windows (64 KiB), so a CPU fault of the
 * first half maps exactly the first half; at 64 KiB there is no fault-around.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { GpuDevice } from '../../src/gpu/device.ts';
import { checkInvariants } from '../../src/policy/invariants.ts';
import {
  atomicTotals,
  counters,
  type DeviceLab,
  delta,
  diskBytes,
  expectBytes,
  MATRIX,
  mountDevice,
  openGpu,
  pattern,
  u32,
} from './helpers.ts';

const N = 32;
const NAME = 'hmm.dat';

describe.each(MATRIX)('hmm-tests on file pages (%s), page size %i', (policy, P) => {
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

  /** A mount with a file of N pages of tag 1, on disk and out of the page cache. */
  async function setup(devicePages = 64, hostPages = 64) {
    lab = await mountDevice(gpu, { policy, pageSize: P, hostPages, devicePages });
    const f = await lab.fs.open(NAME, { create: true });
    await f.write(0, pattern(0, N * P, 1));
    await f.fsync();
    await lab.fs.dropCaches();
    return { lab, f, dm: lab.dm };
  }

  /** `host/dev/cpu` of pages [first, last], e.g. 'S/rw/-'. */
  async function states(first = 0, last = N - 1): Promise<string[]> {
    const rows = await lab!.fs.snapshot(NAME, first, last);
    return rows.map((r) => `${r.host}/${r.dev}/${r.cpu}`);
  }
  const all = (s: string, n = N) => Array.from({ length: n }, () => s);

  it('file_read: device read of a file mapping: the data, one fault per page, copies to the device only', async () => {
    const { f, dm } = await setup();
    const vma = f.mmap();
    expectBytes(await vma.load(0, N * P), pattern(0, N * P, 1), 'CPU load');
    const before = counters(dm.counters);
    expectBytes(await f.deviceRead(0, N * P), pattern(0, N * P, 1), 'device read');
    const d = delta(before, dm.counters);
    expect(d.faultsUnique).toBe(N);
    expect(d.faultsRead).toBe(N);
    expect(d.faultsRaw).toBeGreaterThan(N); // thousands of threads on each page: coalesced
    expect(d.bytesHostToDevice).toBe(N * P);
    expect(d.bytesDeviceToHost).toBe(0);
    // mirror: A stays, write-protected; migrate: A moved to the device, the CPU mapping cleared.
    expect(await states()).toEqual(all(migrate ? 'E/ro/-' : 'C/ro/ro'));
    expect(lab!.fs.vmstat().nr_file_pages).toBe(migrate ? 0 : N);
    await checkInvariants(lab!.fs);
  });

  it('a second device read of the same range faults nothing and copies nothing', async () => {
    const { f, dm } = await setup();
    await f.deviceRead(0, N * P);
    const before = counters(dm.counters);
    expectBytes(await f.deviceRead(0, N * P), pattern(0, N * P, 1), 'device read');
    const d = delta(before, dm.counters);
    expect(d.faultsRaw).toBe(0);
    expect(d.bytesHostToDevice).toBe(0);
    expect(d.replays).toBe(0);
  });

  it('a device read fault write-protects (mirror) or unmaps (migrate) a writable CPU mapping; the next CPU store takes the page back', async () => {
    const { f, dm } = await setup();
    const vma = f.mmap();
    await vma.store(0, pattern(0, 2 * P, 2));
    expect(await states(0, 1)).toEqual(all('D/-/rw', 2));
    expectBytes(await f.deviceRead(0, 2 * P), pattern(0, 2 * P, 2), 'device read of CPU-written pages');
    expect(await states(0, 1)).toEqual(all(migrate ? 'E/ro/-' : 'D/ro/ro', 2));
    const before = counters(dm.counters);
    await vma.store(P, pattern(P, 4, 3));
    // mirror: A' revoked; migrate: page 1 migrated back (A' revoked and freed, its data copied home)
    expect(delta(before, dm.counters).revocations).toBeGreaterThanOrEqual(1);
    expect(delta(before, dm.counters).bytesDeviceToHost).toBe(migrate ? P : 0);
    expect(await states(0, 1)).toEqual(migrate ? ['E/ro/-', 'D/-/rw'] : ['D/ro/ro', 'D/-/rw']);
    const want = pattern(0, 2 * P, 2);
    want.set(pattern(P, 4, 3), P);
    expectBytes(await f.deviceRead(0, 2 * P), want, 'device read after the CPU store');
  });

  it('file_write: device write is visible through the mapping and through read(2), each page copied back once', async () => {
    const { lab, f, dm } = await setup();
    const vma = f.mmap();
    await vma.load(0, N * P);
    const pgunmap = lab.fs.vmstat().pgunmap ?? 0;
    const before = counters(dm.counters);
    // Partial first and last pages: the device must start from the file's data.
    await f.deviceWrite(P / 2, N * P - P, 2);
    let d = delta(before, dm.counters);
    expect(d.faultsUnique).toBe(N);
    expect(d.faultsWrite).toBe(N);
    expect(d.bytesHostToDevice).toBe(N * P);
    expect(d.bytesDeviceToHost).toBe(0);
    expect(lab.fs.vmstat().pgunmap - pgunmap).toBeGreaterThanOrEqual(N); // every CPU PTE cleared
    const rows = await lab.fs.snapshot(NAME, 0, N - 1);
    expect(rows.map((r) => `${r.host}/${r.dev}/${r.cpu}`)).toEqual(all(migrate ? 'E/rw/-' : 'S/rw/-'));
    expect(rows.every((r) => r.devDirty && r.frame !== null)).toBe(true);

    const want = pattern(0, N * P, 1);
    want.set(pattern(P / 2, N * P - P, 2), P / 2);
    expectBytes(await vma.load(0, N * P), want, 'mmap load after the device write');
    // mirror: copied back, A' read-only beside A; migrate: migrated back, A' freed
    expect(await states()).toEqual(all(migrate ? 'D/-/ro' : 'D/ro/ro'));
    expectBytes(await f.read(0, N * P), want, 'read(2) after the device write');
    d = delta(before, dm.counters);
    expect(d.bytesDeviceToHost).toBe(N * P);
    await f.fsync();
    expectBytes(diskBytes(lab.dir, NAME), want, 'disk after fsync');
    await checkInvariants(lab.fs);
  });

  it('a CPU fault on half of a device-held range moves only those pages back', async () => {
    const { f, dm } = await setup();
    await f.deviceWrite(0, N * P, 3);
    const vma = f.mmap();
    const before = counters(dm.counters);
    expectBytes(await vma.load(0, (N / 2) * P), pattern(0, (N / 2) * P, 3), 'CPU load of the first half');
    expect(delta(before, dm.counters).bytesDeviceToHost).toBe((N / 2) * P);
    expect(await states()).toEqual(
      migrate
        ? [...all('D/-/ro', N / 2), ...all('E/rw/-', N / 2)]
        : [...all('D/ro/ro', N / 2), ...all('S/rw/-', N / 2)],
    );

    // Writing the whole range again: mirror upgrades the first half (no copy: A' holds the data);
    // migrate moves it to the device again (one copy each).
    const again = counters(dm.counters);
    await f.deviceWrite(0, N * P, 4);
    const d = delta(again, dm.counters);
    expect(d.faultsUnique).toBe(N / 2);
    expect(d.bytesHostToDevice).toBe(migrate ? (N / 2) * P : 0);
    expect(await states()).toEqual(all(migrate ? 'E/rw/-' : 'S/rw/-'));
    expectBytes(await f.read(0, N * P), pattern(0, N * P, 4), 'read(2) of the rewritten range');
  });

  it('device eviction, then CPU access: data intact', async () => {
    const { lab, f, dm } = await setup(4);
    const before = counters(dm.counters);
    await f.deviceWrite(0, N * P, 5);
    let d = delta(before, dm.counters);
    expect(d.evictions).toBeGreaterThanOrEqual(N - 4);
    expect(d.evictionsDirty).toBeGreaterThanOrEqual(N - 4);
    const s = await states();
    expect(s.filter((x) => !x.includes('/-/')).length).toBeLessThanOrEqual(4);
    // mirror: copied back to A; migrate: migrated home (a host page was free)
    expect(s.filter((x) => x === 'D/-/-').length).toBeGreaterThanOrEqual(N - 4);
    await checkInvariants(lab.fs);
    expectBytes(await f.read(0, N * P), pattern(0, N * P, 5), 'read(2) after device eviction');
    expectBytes(await f.mmap().load(0, N * P), pattern(0, N * P, 5), 'mmap load after device eviction');

    // Clean device pages: mirror drops them (A holds the data); migrate brings them home (A was
    // freed when they moved), each once.
    await f.fsync();
    const clean = counters(dm.counters);
    expectBytes(await f.deviceRead(0, N * P), pattern(0, N * P, 5), 'device read through 4 frames');
    d = delta(clean, dm.counters);
    expect(d.evictions).toBeGreaterThanOrEqual(N - 4);
    expect(d.evictionsDirty).toBe(0);
    expect(d.bytesDeviceToHost).toBe(migrate ? d.evictions * P : 0);
    await f.fsync();
    expectBytes(diskBytes(lab.dir, NAME), pattern(0, N * P, 5), 'disk after fsync');
  });

  it('ten rounds of alternating CPU and device access: the data is right every round', async () => {
    const { lab, f } = await setup();
    const vma = f.mmap();
    const model = pattern(0, N * P, 1);
    for (let r = 0; r < 10; r++) {
      // A CPU write of 3 pages at a moving, unaligned offset; write(2) and mmap stores in turn.
      const cOff = (r * 5 * P) / 2 + 3 * r;
      const cpu = pattern(cOff, 3 * P, 100 + 2 * r);
      if (r % 2 === 0) await f.write(cOff, cpu);
      else await vma.store(cOff, cpu);
      model.set(cpu, cOff);
      expectBytes(await f.deviceRead(0, N * P), model, `round ${r}: device read`);
      // A device write of 5 pages elsewhere, word-aligned.
      const dOff = ((r * 7 + 9) % (N - 5)) * P + 4 * r;
      await f.deviceWrite(dOff, 5 * P, 101 + 2 * r);
      model.set(pattern(dOff, 5 * P, 101 + 2 * r), dOff);
      const got = r % 2 === 0 ? await f.read(0, N * P) : await vma.load(0, N * P);
      expectBytes(got, model, `round ${r}: CPU ${r % 2 === 0 ? 'read(2)' : 'load'}`);
      await checkInvariants(lab.fs);
    }
    await f.fsync();
    expectBytes(diskBytes(lab.dir, NAME), model, 'disk after fsync');
  });

  describe.each([
    ['an mmap load', 'load'],
    ['read(2)', 'read'],
    ['an mmap store', 'store'],
    ['write(2)', 'write'],
  ] as const)('exclusive: device-exclusive atomic access, then %s', (_what, how) => {
    // mirror: a CPU read write-protects A', a CPU write revokes it. migrate: an mmap access migrates
    // the page back; read(2) and write(2) bounce, and the device keeps the page.
    it('exact totals, visible to the CPU; the next device access faults again where the CPU took the page', async () => {
      lab = await mountDevice(gpu, { policy, pageSize: P, hostPages: 64, devicePages: 64 });
      const f = await lab.fs.open(NAME, { create: true });
      await f.write(0, new Uint8Array(2 * P));
      const dm = lab.dm;
      const words = (2 * P) / 4;
      const threads = 16_384;
      const iters = 64;
      const once = atomicTotals(words, threads, iters);

      let before = counters(dm.counters);
      await f.deviceAtomicInc(0, words, threads, iters);
      expect(delta(before, dm.counters).faultsUnique).toBe(2);
      expect(await states(0, 1)).toEqual(all(migrate ? 'E/rw/-' : 'S/rw/-', 2));
      // The device sees its own totals without a fault (rw includes read).
      before = counters(dm.counters);
      expect(u32(await f.deviceRead(0, 2 * P))).toEqual(once);
      expect(delta(before, dm.counters).faultsRaw).toBe(0);

      // The CPU access: reads write-protect both pages; a store to word 0 revokes page 0 only.
      before = counters(dm.counters);
      const mark = Uint8Array.of(7, 0, 0, 0);
      const vma = f.mmap();
      const want = once.slice();
      switch (how) {
        case 'load':
          expect(u32(await vma.load(0, 2 * P))).toEqual(once);
          break;
        case 'read':
          expect(u32(await f.read(0, 2 * P))).toEqual(once);
          break;
        case 'store':
          await vma.store(0, mark);
          want[0] = 7;
          break;
        case 'write':
          await f.write(0, mark);
          want[0] = 7;
          break;
      }
      const d = delta(before, dm.counters);
      const writes = how === 'store' || how === 'write';
      if (migrate) {
        // load: both pages home; store: page 0 home; read/write: one bounce copy, both stay (a
        // write write-protects the page it bounces into: the device must not write it meanwhile)
        const home = how === 'load' ? 2 : how === 'store' ? 1 : 0;
        expect(d.revocations).toBe(home);
        const onDevice = how === 'load' ? [] : how === 'store' ? [1] : [0, 1];
        const rows = await states(0, 1);
        for (const i of [0, 1]) {
          const dev = how === 'write' && i === 0 ? 'ro' : 'rw';
          expect(rows[i]).toBe(onDevice.includes(i) ? `E/${dev}/-` : `D/-/${how === 'load' ? 'ro' : 'rw'}`);
        }
        expect(d.bytesDeviceToHost).toBe(how === 'write' ? P : 2 * P - (how === 'store' ? P : 0));
      } else if (writes) {
        expect(d.revocations).toBeGreaterThanOrEqual(1);
        expect(await states(0, 0)).toEqual([how === 'store' ? 'D/-/rw' : 'D/-/-']);
        expect(await states(1, 1)).toEqual(['S/rw/-']);
        expect(d.bytesDeviceToHost).toBe(P);
      } else {
        expect(d.writeProtects).toBeGreaterThanOrEqual(2);
        expect(await states(0, 1)).toEqual(all(how === 'load' ? 'D/ro/ro' : 'D/ro/-', 2));
        expect(d.bytesDeviceToHost).toBe(2 * P);
      }
      expect(u32(await f.read(0, 2 * P))).toEqual(want);

      // The next atomic run must fault again on every page the CPU took back.
      before = counters(dm.counters);
      await f.deviceAtomicInc(0, words, threads, iters);
      const retaken = migrate ? (how === 'load' ? 2 : how === 'store' || how === 'write' ? 1 : 0) : 2;
      expect(delta(before, dm.counters).faultsUnique).toBe(retaken);
      for (let w = 0; w < words; w++) want[w] += once[w];
      expect(u32(await f.read(0, 2 * P))).toEqual(want);
      await checkInvariants(lab.fs);
    });
  });
});
