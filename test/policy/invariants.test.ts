/**
 * The invariant checker catches what it claims to catch. Each test builds a real mount on the real
 * GPU, puts it in a legal state with real ops (clean and dirty pages with read-only device copies,
 * read-only and writable device entries, a stale page the device wrote, a CPU mapping), corrupts
 * exactly one thing through the device's or the page cache's own interfaces, and expects
 * checkInvariants to fail with EIO naming that page and that invariant. A clean state passes.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { DeviceMemory, type DevicePageTable, pteEncode } from '../../src/device/index.ts';
import { applyPteOps } from '../../src/device/pagetable.ts';
import { PTE_DIRTY } from '../../src/device/pte.ts';
import { type File, HmmFs } from '../../src/fs/hmmfs.ts';
import type { GpuDevice } from '../../src/gpu/device.ts';
import { page_cache_alloc_nowait, replace_page_cache_entry } from '../../src/mm/index.ts';
import { trylock_page, unlock_page } from '../../src/mm/page.ts';
import { mk_pte } from '../../src/mm/pte.ts';
import { type DeviceEntry, type Page, PG_uptodate, PG_writeback } from '../../src/mm/types.ts';
import { checkInvariants } from '../../src/policy/invariants.ts';
import { MirrorPolicy } from '../../src/policy/mirror.ts';
import { MIRROR_TABLE, type PageState } from '../../src/policy/mirrorTable.ts';
import { rejection } from '../helpers/rejection.ts';
import { type MirrorLab, mountDevice, mountMirror, openGpu, pattern } from './helpers.ts';

const P = 4096;
const NAME = 'inv.dat';

let gpu: GpuDevice;
beforeAll(async () => {
  gpu = await openGpu();
});
afterAll(() => {
  if (!gpu.lost) gpu.destroy();
});

/**
 * Pages 0-3: C with A' ro, mapped read-only by the CPU (fault-around); 4-7: E ro; 8-9: E rw; 10: D with
 * A' ro; 11: S rw. Every page of the file has a device copy.
 */
async function buildState(f: File): Promise<void> {
  await f.write(0, pattern(0, 12 * P, 1));
  await f.fsync();
  await f.deviceRead(0, 8 * P);
  await f.deviceWrite(8 * P, 2 * P, 2);
  await f.fs.dropCaches(); // A' ro -> E ro, S -> E rw
  await f.read(0, 2 * P); // E ro -> C ro, readahead brings 2-3 back too
  await f.mmap().load(P, 4); // fault-around maps 0-3
  await f.write(10 * P, pattern(10 * P, 8, 3));
  await f.deviceRead(10 * P, 8); // D, then A' ro
  await f.deviceWrite(11 * P, P, 4); // S rw
}

const STATE = ['C ro ro', 'C ro ro', 'C ro ro', 'C ro ro', 'E - ro', 'E - ro', 'E - ro', 'E - ro']
  .concat(['E - rw', 'E - rw', 'D - ro', 'S - rw'])
  .join(', ');

/** checkInvariants fails with EIO whose message matches `what`. */
async function expectBroken(l: MirrorLab, what: RegExp): Promise<void> {
  const e = await rejection(checkInvariants(l.fs));
  expect(e.code).toBe('EIO');
  expect(e.message).toMatch(/^invariant broken: /);
  expect(e.message).toMatch(what);
}

describe('checkInvariants on a mirror mount', () => {
  let lab: MirrorLab;
  let f: File;
  let space: DevicePageTable;
  const page = (index: number): Page => {
    const e = f.mapping.i_pages.get(index);
    if (e?.kind !== 'page') throw new Error(`page ${index} is not resident`);
    return e;
  };
  const frameOf = (index: number): number => lab.policy.devicePage(f.mapping, index).frame!;
  /** Clear and set bits of one PTE on the GPU through the device's PTE-update kernel, nothing else. */
  const pteOp = (index: number, clear: number, set: number) =>
    applyPteOps(gpu, lab.dm.kernels.pteUpdate, space, [{ index, clear, set }]);

  beforeEach(async () => {
    lab = await mountMirror(gpu, { pageSize: P, hostPages: 8, devicePages: 32 });
    f = await lab.fs.open(NAME, { create: true });
    await buildState(f);
    space = lab.dm.space(f.mapping.id);
  });
  afterEach(async () => {
    await lab.cleanup();
  });

  it('a legal state of every kind passes', async () => {
    const rows = lab.fs.snapshot(NAME, 0, 11);
    expect(rows.map((r) => `${r.host} ${r.cpu} ${r.dev}`).join(', ')).toBe(STATE);
    await checkInvariants(lab.fs);
  });

  it('checking moves no counter: the readbacks go around the counted copy path', async () => {
    const vm = lab.fs.vmstat();
    const dev = { ...lab.dm.counters };
    await checkInvariants(lab.fs);
    expect(lab.fs.vmstat()).toEqual(vm);
    expect({ ...lab.dm.counters }).toEqual(dev);
  });

  it('a PTE the policy has no record of', async () => {
    const [frame] = await lab.dm.allocFrames(space, [20]);
    await lab.dm.map(space, [{ index: 20, frame: frame!, perm: 'ro' }]);
    await expectBroken(
      lab,
      /inv\.dat page 20: the GPU maps it ro to frame \d+ and the policy holds no record/,
    );
  });

  it('a record whose PTE was revoked behind the policy', async () => {
    await lab.dm.revoke(space, [4]);
    await expectBroken(lab, /page 4: the policy holds a ro copy in frame \d+ and the GPU has no PTE for it/);
  });

  it('a PTE whose permission differs from the record', async () => {
    await pteOp(5, 0, pteEncode(frameOf(5), 'rw'));
    await expectBroken(lab, /page 5: the GPU page table says rw frame \d+, the policy ro frame \d+/);
  });

  it('DIRTY on a read-only PTE', async () => {
    await pteOp(2, 0, PTE_DIRTY);
    await expectBroken(lab, /page 2: DIRTY is set on a read-only PTE/);
  });

  it('a FAIL bit left after the op', async () => {
    await lab.dm.markFailed(space, [{ index: 8, write: true }], true);
    await expectBroken(lab, /page 8: FAIL_WRITE is left on its PTE after the op/);
  });

  it('two pages on one frame', async () => {
    await pteOp(21, 0, pteEncode(frameOf(3), 'ro'));
    await expectBroken(
      lab,
      /page 21: two pages on one frame: its PTE maps frame \d+, which page 3 of inv\.dat/,
    );
  });

  it('a mapped frame whose owner is another page', async () => {
    const frame = frameOf(6);
    lab.dm.pool.release(frame);
    expect(lab.dm.pool.takeFree([{ space: space.id, index: 30 }])).toEqual([frame]);
    await expectBroken(lab, new RegExp(`page 6: its PTE maps frame ${frame}, whose owner is page 30 of`));
  });

  it('a frame owned but neither mapped nor free', async () => {
    const [frame] = await lab.dm.allocFrames(space, [40]);
    await expectBroken(lab, new RegExp(`page 40: frame ${frame} is owned by it but neither mapped nor free`));
  });

  it('the host shadow of the page table disagrees with the GPU', async () => {
    space.entries.delete(7);
    await expectBroken(lab, /page 7: the device layer's host shadow says no PTE, the GPU ro frame \d+/);
  });

  it('a read-only copy that differs from A', async () => {
    const { buffer, offset } = lab.dm.pool.locate(frameOf(1));
    gpu.device.queue.writeBuffer(buffer, offset + 124, new Uint8Array([254, 254, 254, 254]));
    await expectBroken(
      lab,
      /page 1: its read-only device copy \(frame \d+\) differs from A at byte offset 124/,
    );
  });

  it('a read-only device entry whose copy differs from the disk', async () => {
    const { buffer, offset } = lab.dm.pool.locate(frameOf(5));
    gpu.device.queue.writeBuffer(buffer, offset + 4092, new Uint8Array([254, 254, 254, 254]));
    await expectBroken(
      lab,
      /page 5: its read-only device copy \(frame \d+\) differs from the disk at byte offset 4092/,
    );
  });

  it('a device address space that belongs to no open file', async () => {
    lab.dm.space(1_000_000);
    await expectBroken(lab, /device: device address space 1000000 belongs to no open file/);
  });

  it('a page left locked', async () => {
    expect(trylock_page(page(0))).toBe(true);
    try {
      await expectBroken(lab, /page 0: PG_locked is set between ops/);
    } finally {
      unlock_page(page(0));
    }
  });

  it('a page left under writeback', async () => {
    page(10).flags |= PG_writeback;
    try {
      await expectBroken(lab, /page 10: PG_writeback is set between ops/);
    } finally {
      page(10).flags &= ~PG_writeback;
    }
  });

  it('a mapcount that is not the number of CPU PTEs', async () => {
    page(0).mapcount++;
    try {
      await expectBroken(lab, /page 0: mapcount is 2, but 1 CPU PTE\(s\) map it/);
    } finally {
      page(0).mapcount--;
    }
  });

  it('a CPU PTE that maps no page of the cache', async () => {
    const vma = [...f.mapping.i_mmap][0];
    Atomics.store(vma.pte, 12, mk_pte(page(0).slot, false));
    try {
      await expectBroken(lab, /page 12: a CPU PTE maps host slot \d+, which is not the page cached here/);
    } finally {
      Atomics.store(vma.pte, 12, 0);
    }
  });

  it('a cached page off the LRU', async () => {
    lab.fs.pageCache.lru.delete(page(3));
    try {
      await expectBroken(lab, /page 3: in the page cache but not on the LRU/);
    } finally {
      lab.fs.pageCache.lru.add(page(3));
    }
  });

  it('a host page slot leaked', async () => {
    const slot = lab.fs.pageCache.pool.alloc();
    try {
      await expectBroken(lab, /host page pool: 7 slots in use but 6 pages cached/);
    } finally {
      lab.fs.pageCache.pool.release(slot);
    }
  });

  it('an illegal page state: A not uptodate beside a read-only copy', async () => {
    page(10).flags &= ~PG_uptodate;
    try {
      await expectBroken(lab, /page 10: illegal state \(A S, A' ro, CPU -\)/);
    } finally {
      page(10).flags |= PG_uptodate;
    }
  });

  it('reads the whole page table, past the highest recorded page', async () => {
    const last = space.capacity - 1;
    expect(last).toBeGreaterThan(11);
    await pteOp(last, 0, pteEncode(frameOf(9), 'ro'));
    await expectBroken(lab, new RegExp(`page ${last}: two pages on one frame`));
  });
});

/** A scheme stricter than the mirror table: it never lets a device entry stay writable. */
class NoWritableEntries extends MirrorPolicy {
  override readonly table = {
    ...MIRROR_TABLE,
    isLegal: (s: PageState) => MIRROR_TABLE.isLegal(s) && !(s.host === 'E' && s.dev === 'rw'),
  };
}

it("the checker asks the policy's own table, not the mirror table", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hmmlab-inv-'));
  const dm = await DeviceMemory.create(gpu, { devicePages: 32, pageSize: P });
  const hfs = await HmmFs.mount({ dir, pageSize: P, hostPages: 8, policy: new NoWritableEntries(dm) });
  try {
    const f = await hfs.open(NAME, { create: true });
    await buildState(f);
    const e = await rejection(checkInvariants(hfs));
    expect(e.code).toBe('EIO');
    expect(e.message).toMatch(/inv\.dat page 8: illegal state \(A E, A' rw, CPU -\)/);
  } finally {
    await hfs.unmount();
    dm.destroy();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

it('after ops that failed (write(2) past the block budget, a refused device write) the state passes', async () => {
  const lab = await mountMirror(gpu, { pageSize: P, hostPages: 8, devicePages: 32, blocks: 2 });
  try {
    const f = await lab.fs.open(NAME, { create: true });
    await f.write(0, pattern(0, 2 * P, 1));
    expect((await rejection(f.write(2 * P, pattern(2 * P, P, 2)))).code).toBe('ENOSPC');
    await checkInvariants(lab.fs);
    await f.truncate(4 * P); // pages 2-3: a hole, and no block left for them
    expect((await rejection(f.deviceWrite(0, 4 * P, 3))).code).toBe('EFAULT');
    await checkInvariants(lab.fs); // no FAIL bit left on pages 2-3, no page left locked
  } finally {
    await lab.cleanup();
  }
});

describe('checkInvariants on a migrate mount: the migrate table is the one it checks against', () => {
  /** Pages 0-1: E ro (clean), 2: E ro newer than the disk (a write(2) bounced into it), 3: E rw, 4: D mapped ro. */
  async function migrateState() {
    const lab = await mountDevice(gpu, { policy: 'migrate', pageSize: P, hostPages: 8, devicePages: 32 });
    const f = await lab.fs.open(NAME, { create: true });
    await f.write(0, pattern(0, 5 * P, 1));
    await f.fsync();
    await f.deviceRead(0, 3 * P);
    await f.write(2 * P + 8, pattern(2 * P + 8, 8, 2)); // bounced: page 2 stays on the device
    await f.deviceWrite(3 * P, P, 3);
    await f.write(4 * P, pattern(4 * P, 8, 4));
    await f.mmap().load(4 * P, 4);
    return { lab, f };
  }

  it('a legal state of every kind passes, a read-only entry newer than the disk included', async () => {
    const { lab } = await migrateState();
    try {
      const rows = lab.fs.snapshot(NAME, 0, 4).map((r) => `${r.host} ${r.cpu} ${r.dev}`);
      expect(rows).toEqual(['E - ro', 'E - ro', 'E - ro', 'E - rw', 'D ro -']);
      await checkInvariants(lab.fs);
    } finally {
      await lab.cleanup();
    }
  });

  it('a read-only entry that differs from the disk and was never written is still caught', async () => {
    const { lab, f } = await migrateState();
    try {
      const { buffer, offset } = lab.dm.pool.locate(lab.policy.devicePage(f.mapping, 1).frame!);
      gpu.device.queue.writeBuffer(buffer, offset + 8, new Uint8Array([254, 254, 254, 254]));
      await expectBroken(
        lab,
        /page 1: its read-only device copy \(frame \d+\) differs from the disk at byte offset 8/,
      );
    } finally {
      await lab.cleanup();
    }
  });

  it("a state the mirror table allows is illegal under migrate's: A uptodate beside a device copy", async () => {
    const { lab, f } = await migrateState();
    try {
      // A' of page 0 kept, and A brought back beside it behind the policy's back (as mirror's E ro -> C).
      const e = f.mapping.i_pages.get(0)!;
      const { frame } = lab.policy.devicePage(f.mapping, 0);
      const data = await lab.dm.copyFromFrames([frame!]);
      const page = page_cache_alloc_nowait(f.mapping, 0)!;
      page.data.set(data[0]);
      page.flags |= PG_uptodate;
      unlock_page(page);
      try {
        await expectBroken(lab, /page 0: illegal state \(A C, A' ro, CPU -\)/);
      } finally {
        trylock_page(page);
        replace_page_cache_entry(page, e as DeviceEntry);
      }
    } finally {
      await lab.cleanup();
    }
  });
});
