/**
 * CPU worker threads on shared mappings of real files (src/cpu): real worker_threads, the real
 * host pool and PTE SharedArrayBuffers, a real HmmFs (host-only policy) behind the owner API.
 * Concurrent stores and loads of two workers; CPU shootdown after a write-protect and after a
 * revoke, with the worker parked inside its access by a shared-memory handshake (never a sleep), so
 * the interleaving is the same every run; a stuck worker makes the shootdown time out naming it;
 * atomic increments from two workers and the owner thread; a write-protect storm against running
 * increments. Each test terminates its workers.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { AccessStall } from '../../src/cpu/stall.ts';
import { HmmlabError } from '../../src/errors.ts';
import { vma_pte_access } from '../../src/mm/memory.ts';
import { page_mkclean, try_to_unmap } from '../../src/mm/rmap.ts';
import { diskBytes, equalBytes, pattern } from '../fs/helpers.ts';
import { type CpuLab, cachedPage, createMapped, onlyVma, startCpuLab, track, turns } from './helpers.ts';

const PS = 4096;

let cl: CpuLab | undefined;
afterEach(async () => {
  await cl?.cleanup();
  cl = undefined;
});

describe('worker loads and stores', () => {
  it('two workers store and load concurrently through shared mappings of a real file', async () => {
    cl = await startCpuLab(2);
    const [a, b] = cl.threads.workers.map((w) => w.api);
    const fda = await a.open('f', true);
    await a.write(fda, 0, new Uint8Array(16 * PS));
    const fdb = await b.open('f');
    const va = await a.mmap(fda);
    const vb = await b.mmap(fdb);
    const want = new Uint8Array(16 * PS);
    want.set(pattern(0, 8 * PS, 1), 0);
    want.set(pattern(8 * PS, 8 * PS, 2), 8 * PS);
    // Each stores its half in unaligned pieces that straddle pages, both at once.
    const pieces = async (w: typeof a, vma: number, from: number) => {
      for (const [off, len] of [
        [0, 5000],
        [5000, 3000],
        [8000, 8 * PS - 8000],
      ])
        await w.store(vma, from + off, want.slice(from + off, from + off + len));
    };
    await Promise.all([pieces(a, va, 0), pieces(b, vb, 8 * PS)]);
    // Each reads the other's half through its own mapping; then b reads a's whole mapping (one mm).
    const [ha, hb] = await Promise.all([a.load(va, 8 * PS, 8 * PS), b.load(vb, 0, 8 * PS)]);
    expect(equalBytes(ha, want.subarray(8 * PS))).toBe(true);
    expect(equalBytes(hb, want.subarray(0, 8 * PS))).toBe(true);
    const whole = await b.load(va, 0, 16 * PS);
    expect(equalBytes(whole, want)).toBe(true);
    // read(2) sees the stores, and after fsync so does the disk.
    expect(equalBytes(await b.read(fdb, 0, 16 * PS), want)).toBe(true);
    await a.fsync(fda);
    expect(equalBytes(diskBytes(cl.lab.dir, 'f'), want)).toBe(true);
    // a: 8 write faults, then one read fault on page 8 whose fault-around maps 9..15 read-only.
    expect((await a.stats()).faults).toBe(9);
    expect(cl.threads.worker(0).faults).toBe(9);
    // b likewise; its load of a's mapping finds every page mapped already.
    expect(cl.threads.stats().cpu_worker_faults).toBe(18);
    expect(cl.lab.fs.vmstat().pgfault).toBe(18);
  });

  it('a read fault that finds the PTE made writable meanwhile leaves it writable (no downgrade without a shootdown)', async () => {
    cl = await startCpuLab(2);
    const [a, b] = cl.threads.workers.map((w) => w.api);
    const { v } = await createMapped(a, 'f', new Uint8Array(PS));
    const f = await cl.lab.fs.open('f');
    const vma = onlyVma(f);
    const faultsSent = (cpu: number, n: number) => async () => {
      while (cl!.threads.worker(cpu).faults < n) await turns(1);
    };
    // Hold the mount exclusive while a's write fault, then b's read fault, queue behind it.
    let store: Promise<void> | undefined;
    let load: Promise<Uint8Array> | undefined;
    await cl.lab.fs.exclusive('test', async () => {
      store = a.store(v, 0, new Uint8Array([1, 2, 3, 4]));
      await faultsSent(0, 1)();
      load = b.load(v, 0, 4);
      await faultsSent(1, 1)();
    });
    await Promise.all([store, load]);
    expect(vma_pte_access(vma, 0)).toBe('rw');
    expect(await b.load(v, 0, 4)).toEqual(new Uint8Array([1, 2, 3, 4]));
    expect(cl.owner.spuriousFaults).toBe(1);
    // Both faults run at once once the mount is free: b's waits for the page lock a's holds, then
    // finds the PTE writable under it (the spurious fault is counted as a fault, then changes nothing).
    expect(cl.lab.fs.vmstat().pgfault).toBe(2);
  });

  it('a load past EOF is SIGBUS and a load past the mapping is SIGSEGV, with their errno codes', async () => {
    cl = await startCpuLab(1);
    const w = cl.threads.worker(0).api;
    const { v } = await createMapped(w, 'f', new Uint8Array(2 * PS + 10), 4 * PS);
    expect(await w.load(v, 2 * PS, 16)).toEqual(new Uint8Array(16)); // the tail of the last page
    const bus = await w.load(v, 3 * PS, 4).catch((e: unknown) => e);
    expect(bus).toBeInstanceOf(HmmlabError);
    expect((bus as HmmlabError).code).toBe('EFAULT');
    expect((bus as Error).message).toMatch(/page 3 of f .*past EOF.*SIGBUS/);
    await expect(w.load(v, 4 * PS - 2, 4)).rejects.toThrow(/SIGSEGV/);
    await expect(w.read(99, 0, 1)).rejects.toMatchObject({ code: 'EBADF' });
  });
});

describe('CPU TLB shootdown', () => {
  it('a write-protect waits for a store in progress, and the next store faults', async () => {
    cl = await startCpuLab(1);
    const w = cl.threads.worker(0).api;
    const { v } = await createMapped(w, 'f', new Uint8Array(8 * PS));
    await w.store(v, 0, new Uint8Array(8 * PS).fill(1)); // every PTE writable
    const f = await cl.lab.fs.open('f');
    const vma = onlyVma(f);
    const page = cachedPage(f, 3);

    const stall = new AccessStall();
    await w.armStall(v, 3, stall.sab);
    const data = pattern(0, 8 * PS, 5);
    const store = track(w.store(v, 0, data)); // a long store: parked inside page 3
    await stall.parked();
    expect(equalBytes(page.data, new Uint8Array(PS).fill(1))).toBe(true); // parked before its copy

    expect(page_mkclean(page)).toBe(1);
    expect(vma_pte_access(vma, 3)).toBe('ro');
    let atResolve: Uint8Array | undefined;
    const shootdown = track(
      cl.threads.cpu_tlb_shootdown([{ ptes: vma.pte, index: 3 }]).then(() => {
        atResolve = page.data.slice();
      }),
    );
    await turns(20);
    expect(shootdown.settled()).toBe(false);
    expect(stall.isParked).toBe(true);

    stall.release();
    await shootdown.promise;
    // The store under the old PTE finished before the write-protect counted as done.
    expect(equalBytes(atResolve!, data.subarray(3 * PS, 4 * PS))).toBe(true);
    await store.promise;
    expect(cl.threads.stats()).toMatchObject({ cpu_shootdowns: 1, cpu_shootdown_waits: 1 });

    const faults = cl.threads.worker(0).faults;
    const pgfault = cl.lab.fs.vmstat().pgfault;
    await w.store(v, 3 * PS + 8, new Uint8Array([7]));
    expect(cl.threads.worker(0).faults).toBe(faults + 1);
    expect(cl.lab.fs.vmstat().pgfault).toBe(pgfault + 1);
    expect(vma_pte_access(vma, 3)).toBe('rw');
    expect(page.data[8]).toBe(7);
  });

  it('a revoke waits for a load in progress, and the next load faults', async () => {
    cl = await startCpuLab(2);
    const [a, b] = cl.threads.workers.map((w) => w.api);
    const old = pattern(0, 4 * PS, 3);
    const { v } = await createMapped(a, 'f', old);
    expect(equalBytes(await a.load(v, 0, 4 * PS), old)).toBe(true); // mapped read-only
    const f = await cl.lab.fs.open('f');
    const vma = onlyVma(f);
    const page = cachedPage(f, 2);

    const stall = new AccessStall();
    await b.armStall(v, 2, stall.sab); // b loads through a's mapping: one mm
    const load = track(b.load(v, 0, 4 * PS));
    await stall.parked();
    expect(try_to_unmap(page)).toBe(1);
    expect(vma_pte_access(vma, 2)).toBe('-');
    // A shootdown of another page does not wait for b; this one does.
    await cl.threads.cpu_tlb_shootdown([{ ptes: vma.pte, index: 1 }]);
    const shootdown = track(cl.threads.cpu_tlb_shootdown([{ ptes: vma.pte, index: 2 }]));
    await turns(20);
    expect(shootdown.settled()).toBe(false);
    stall.release();
    await shootdown.promise;
    expect(equalBytes(await load.promise, old)).toBe(true);
    expect(cl.threads.stats()).toMatchObject({ cpu_shootdowns: 2, cpu_shootdown_waits: 1 });

    const faults = cl.threads.worker(1).faults;
    expect(equalBytes(await b.load(v, 2 * PS, PS), old.subarray(2 * PS, 3 * PS))).toBe(true);
    expect(cl.threads.worker(1).faults).toBe(faults + 1);
    expect(vma_pte_access(vma, 2)).toBe('ro');
  });

  it('a worker stuck inside an access makes the shootdown time out, naming it, without blocking the owner', async () => {
    cl = await startCpuLab(2, 64, 150);
    const w = cl.threads.worker(1);
    const { v } = await createMapped(w.api, 'f', new Uint8Array(4 * PS));
    await w.api.store(v, 0, new Uint8Array(4 * PS).fill(2));
    const f = await cl.lab.fs.open('f');
    const vma = onlyVma(f);

    const stall = new AccessStall();
    await w.api.armStall(v, 2, stall.sab);
    const store = w.api.store(v, 2 * PS, new Uint8Array(16).fill(9));
    await stall.parked();
    page_mkclean(cachedPage(f, 2));
    let ticks = 0;
    const ticker = setInterval(() => ticks++, 5);
    const err = await cl.threads.cpu_tlb_shootdown([{ ptes: vma.pte, index: 2 }]).catch((e: unknown) => e);
    clearInterval(ticker);
    expect(err).toBeInstanceOf(HmmlabError);
    expect((err as HmmlabError).code).toBe('ETIMEDOUT');
    expect((err as Error).message).toContain(`cpu worker 1 (thread ${w.threadId})`);
    expect((err as Error).message).toMatch(/inside an access to page 2 of mapping \d+ .*after 150 ms/);
    expect(ticks).toBeGreaterThan(3); // the owner's event loop kept turning while it waited
    stall.release();
    await store;
    await cl.threads.cpu_tlb_shootdown(); // released: a flush of everything has nothing to wait for
  });
});

describe('atomics through shared mappings', () => {
  it('increments from two workers and the owner thread sum exactly', async () => {
    cl = await startCpuLab(2);
    const [a, b] = cl.threads.workers.map((w) => w.api);
    const { fd, v } = await createMapped(a, 'f', new Uint8Array(2 * PS));
    const N = 20_000;
    const off = PS + 64;
    const owner = (async () => {
      for (let i = 0; i < N; i += 500) {
        await cl!.threads.self.atomicAdd(v, off, 1, 500);
        await turns(1); // let the workers' RPCs in between
      }
    })();
    await Promise.all([a.atomicAdd(v, off, 1, N), b.atomicAdd(v, off, 1, N), owner]);
    const word = new DataView((await a.read(fd, off, 4)).buffer).getUint32(0, true);
    expect(word).toBe(3 * N);
    expect(cl.threads.self.stats().accesses).toBeGreaterThanOrEqual(N);
  });

  it('after a write-protect and its shootdown no increment lands until the write fault is served', async () => {
    cl = await startCpuLab(1);
    const w = cl.threads.worker(0).api;
    const { v } = await createMapped(w, 'f', new Uint8Array(PS));
    await w.atomicAdd(v, 0, 0, 1); // maps the page writable
    const f = await cl.lab.fs.open('f');
    const vma = onlyVma(f);
    const page = cachedPage(f, 0);
    const word = new Uint32Array(page.data.buffer, page.data.byteOffset, 1);

    // Rounds are capped: a worker that manages few adds per round must not make the test long.
    const N = 1_000_000;
    const adds = track(w.atomicAdd(v, 0, 1, N));
    let rounds = 0;
    let last = 0;
    while (!adds.settled() && rounds < 200) {
      // With the mount held exclusive, which the worker's fault needs: the window stays closed.
      await cl.lab.fs.exclusive('test', async () => {
        page_mkclean(page);
        await cl!.threads.cpu_tlb_shootdown([{ ptes: vma.pte, index: 0 }]);
        last = Atomics.load(word, 0);
        await turns(3);
        expect(Atomics.load(word, 0)).toBe(last);
      });
      rounds++;
      // Once the mount is free the fault is served; wait for an increment before closing the window again.
      const deadline = performance.now() + 10_000;
      while (!adds.settled() && Atomics.load(word, 0) === last && performance.now() < deadline)
        await turns(1);
    }
    await adds.promise;
    console.log(`write-protect storm: ${rounds} rounds`);
    expect(Atomics.load(word, 0)).toBe(N);
    expect(rounds).toBeGreaterThanOrEqual(3); // the worker really ran between the rounds
    expect(cl.threads.worker(0).faults).toBeGreaterThanOrEqual(rounds - 1);
  });
});
