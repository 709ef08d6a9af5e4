/**
 * What the CPU-thread protocol costs (issue 9): a worker's load and store per page through a
 * mapped PTE, an atomic add, a CPU fault round trip, a shootdown with nothing to wait for and one
 * against a worker hammering the page, and lockdep's acquire/release. A measurement script, not a
 * test: `npx tsx bench/cpu-access.ts` (medians of a few samples; the machine is noisy).
 */

import { HmmFsCpuOwner } from '../src/cpu/hmmfsOwner.ts';
import { AccessStall } from '../src/cpu/stall.ts';
import { CpuThreads } from '../src/cpu/threads.ts';
import { HmmFs } from '../src/fs/hmmfs.ts';
import { LockClass, Lockdep } from '../src/lock/lockdep.ts';
import { Mutex } from '../src/lock/mutex.ts';
import { page_mkclean } from '../src/mm/rmap.ts';

const PS = 4096;
const PAGES = 4096; // 16 MiB

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function sample(n: number, fn: () => Promise<void> | void): Promise<number> {
  const t: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn();
    t.push(performance.now() - t0);
  }
  return median(t);
}

const row = (what: string, ns: number, note = '') =>
  console.log(`${what.padEnd(52)} ${ns.toFixed(0).padStart(8)} ns ${note}`);

const fs = await HmmFs.mount({ hostPages: PAGES + 64 });
const owner = new HmmFsCpuOwner(fs);
const threads = await CpuThreads.start(owner, { threads: 2 });
try {
  const [a, b] = threads.workers.map((w) => w.api);
  const fd = await a.open('bench', true);
  await a.write(fd, 0, new Uint8Array(PAGES * PS));
  const v = await a.mmap(fd);
  const data = new Uint8Array(PAGES * PS).fill(3);
  await a.store(v, 0, data); // every PTE writable
  console.log(`cpu access costs: ${PAGES} pages of ${PS} bytes, 2 workers (medians)`);

  // Floor: the same copies with no protocol, on this thread.
  const pool = new Uint8Array(fs.pageCache.pool.sab);
  const plain = await sample(9, () => {
    for (let i = 0; i < PAGES; i++) pool.set(data.subarray(i * PS, (i + 1) * PS), i * PS);
  });
  row('plain copy of a 4 KiB page (no PTE check)', (plain * 1e6) / PAGES);
  const selfStore = await sample(9, () => threads.self.store(v, 0, data));
  row('owner thread store per page (PTE check + copy)', (selfStore * 1e6) / PAGES);
  const selfLoad = await sample(9, async () => void (await threads.self.load(v, 0, PAGES * PS)));
  row('owner thread load per page', (selfLoad * 1e6) / PAGES);
  const wStore = await sample(5, () => a.store(v, 0, data));
  row('worker store per page (16 MiB in one RPC, clone incl.)', (wStore * 1e6) / PAGES);
  const wLoad = await sample(5, async () => void (await a.load(v, 0, PAGES * PS)));
  row('worker load per page (16 MiB in one RPC, transfer incl.)', (wLoad * 1e6) / PAGES);
  const N = 1_000_000;
  const wAdd = await sample(3, async () => void (await a.atomicAdd(v, 0, 1, N)));
  row('worker atomic add (one access each)', (wAdd * 1e6) / N);
  const both = await sample(
    3,
    async () => void (await Promise.all([a.atomicAdd(v, 0, 1, N), b.atomicAdd(v, 0, 1, N)])),
  );
  row('two workers atomic add, same word, per add', (both * 1e6) / (2 * N));

  // A CPU fault round trip: write-protect, then a one-add RPC that faults; minus the RPC alone.
  const f = await fs.open('bench');
  const vma = [...f.mapping.i_mmap][0];
  const page0 = f.mapping.i_pages.get(0);
  if (page0?.kind !== 'page') throw new Error('page 0 not cached');
  const rpc = await sample(200, async () => void (await a.atomicAdd(v, 0, 1, 1)));
  const faulting = await sample(200, async () => {
    page_mkclean(page0);
    await threads.cpu_tlb_shootdown([{ ptes: vma.pte, index: 0 }]);
    await a.atomicAdd(v, 0, 1, 1);
  });
  row('RPC round trip to a worker (one add)', rpc * 1e6);
  row('CPU write fault (RPC to owner + filemap_fault), extra', (faulting - rpc) * 1e6);

  // Shootdowns: nothing to wait for, then against a worker adding to the page without pause.
  const idle = await sample(9, async () => {
    for (let i = 0; i < 10_000; i++) await threads.cpu_tlb_shootdown([{ ptes: vma.pte, index: 0 }]);
  });
  row('cpu_tlb_shootdown, no worker inside an access', (idle * 1e6) / 10_000);
  const before = threads.stats();
  const busy = a.atomicAdd(v, 4, 1, 20 * N);
  const t: number[] = [];
  for (let i = 0; i < 2000; i++) {
    const t0 = performance.now();
    await threads.cpu_tlb_shootdown([{ ptes: vma.pte, index: 0 }]);
    t.push(performance.now() - t0);
  }
  await busy;
  const after = threads.stats();
  const waits = after.cpu_shootdown_waits - before.cpu_shootdown_waits;
  row(
    'cpu_tlb_shootdown, a worker adding to that page',
    median(t) * 1e6,
    `(max ${(Math.max(...t) * 1e3).toFixed(0)} us; ${waits} of 2000 had to wait)`,
  );

  // The wake-up: a worker parked inside an access is released; how soon the waiting shootdown ends.
  const wake: number[] = [];
  for (let i = 0; i < 50; i++) {
    const stall = new AccessStall();
    await a.armStall(v, 5, stall.sab);
    const st = a.store(v, 5 * PS, data.subarray(0, PS));
    await stall.parked();
    const sd = threads.cpu_tlb_shootdown([{ ptes: vma.pte, index: 5 }]);
    await new Promise((r) => setImmediate(r));
    const t0 = performance.now();
    stall.release();
    await sd;
    wake.push(performance.now() - t0);
    await st;
  }
  row('cpu_tlb_shootdown wake-up (release to resolve)', median(wake) * 1e6, '(Atomics.notify -> waitAsync)');

  // A shootdown that must wait: against a worker storing 2 MiB pages (each access ~0.1-0.5 ms).
  const big = await HmmFs.mount({ hostPages: 8, pageSize: 2 << 20 });
  const bigOwner = new HmmFsCpuOwner(big);
  const bt = await CpuThreads.start(bigOwner, { threads: 1 });
  try {
    const w = bt.worker(0).api;
    const bfd = await w.open('big', true);
    const bdata = new Uint8Array(8 << 20).fill(5);
    await w.write(bfd, 0, bdata);
    const bv = await w.mmap(bfd);
    await w.store(bv, 0, bdata);
    let storing = true;
    const loop = (async () => {
      while (storing) await w.store(bv, 0, bdata);
    })();
    const waited: number[] = [];
    for (let i = 0; i < 300 && waited.length < 50; i++) {
      const w0 = bt.tlb.shootdownWaits;
      const t0 = performance.now();
      await bt.cpu_tlb_shootdown();
      if (bt.tlb.shootdownWaits > w0) waited.push(performance.now() - t0);
      await new Promise((r) => setTimeout(r, 1));
    }
    storing = false;
    await loop;
    row(
      'cpu_tlb_shootdown that waited (2 MiB page stores)',
      median(waited) * 1e6,
      `(${waited.length} waits; includes the rest of the page's copy)`,
    );
  } finally {
    await bt.close();
    await big.unmount();
  }

  for (const enabled of [false, true]) {
    const dep = new Lockdep({ enabled });
    const m = new Mutex(new LockClass('bench'), dep);
    const inner = new Mutex(new LockClass('inner'), dep);
    const ms = await sample(5, () =>
      dep.task('bench', async () => {
        for (let i = 0; i < 10_000; i++) await m.run(() => inner.run(async () => {}));
      }),
    );
    row(`two nested Mutex.run, lockdep ${enabled ? 'on' : 'off'}`, (ms * 1e6) / 10_000);
  }
} finally {
  await threads.close();
  await fs.unmount();
}
