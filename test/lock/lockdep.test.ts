/**
 * The lock-order validator (src/lock/lockdep.ts) on the real async locks: an AB/BA inversion
 * between two tasks is reported (when the tasks never meet, and when they meet and would deadlock:
 * the second throws instead of waiting), a transitive cycle, page locks out of ascending order,
 * recursion, a task that breaks the declared order the first time, and a correct order that passes.
 * Each test has its own Lockdep, so one test's dependencies do not leak into the next.
 */
import { describe, expect, it } from 'vitest';
import { LockClass, Lockdep, LockdepError } from '../../src/lock/lockdep.ts';
import { Mutex } from '../../src/lock/mutex.ts';
import {
  DEVICE_PT_LOCK,
  I_MMAP_LOCK,
  INVALIDATE_LOCK,
  LOCK_ORDER,
  MOUNT_LOCK,
  PAGE_LOCK,
} from '../../src/lock/order.ts';
import { RwSemaphore } from '../../src/lock/rwsem.ts';

const tick = () => new Promise<void>((r) => setImmediate(r));

/** A page lock as phase 2 will take one: the class, the page object, its index as the order. */
function pageLock(dep: Lockdep, index: number) {
  const page = { index };
  return {
    lock: () => dep.acquire(PAGE_LOCK, page, { order: index }),
    unlock: () => dep.release(PAGE_LOCK, page),
  };
}

describe('lockdep', () => {
  it('reports an AB/BA inversion between two tasks that never met, naming both locks and where each was taken', async () => {
    const dep = new Lockdep({ enabled: true });
    const a = new Mutex(new LockClass('A'), dep);
    const b = new Mutex(new LockClass('B'), dep);
    await dep.task('first', () => a.run(() => b.run(async () => {})));
    const err = await dep.task('second', () => b.run(() => a.run(async () => {}))).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LockdepError);
    const msg = (err as Error).message;
    expect(msg).toMatch(/circular locking dependency: task "second" \(#2\) takes "A" at .*lockdep\.test\.ts/);
    expect(msg).toMatch(/while holding "B", taken at .*lockdep\.test\.ts/);
    expect(msg).toMatch(/"first" \(#1\): "B" taken at .*lockdep\.test\.ts:\d+.* while holding "A", taken at/);
    // The failed acquisition took nothing: both are free.
    expect(a.isLocked || b.isLocked).toBe(false);
  });

  it('turns a real AB/BA deadlock between two concurrent tasks into an error in the second', async () => {
    const dep = new Lockdep({ enabled: true });
    const a = new Mutex(new LockClass('A'), dep);
    const b = new Mutex(new LockClass('B'), dep);
    let bHeld = false;
    const first = dep.task('first', () =>
      a.run(async () => {
        while (!bHeld) await tick(); // second holds B now
        await b.run(async () => 'first got B');
      }),
    );
    const second = dep.task('second', () =>
      b.run(async () => {
        bHeld = true;
        await tick();
        await a.run(async () => {}); // first holds A and waits for B: a deadlock without lockdep
      }),
    );
    await expect(second).rejects.toThrow(/circular locking dependency: task "second".*takes "A"/s);
    await expect(first).resolves.toBeUndefined(); // second's error released B
  });

  it('reports a cycle through a third class, with the whole chain', async () => {
    const dep = new Lockdep({ enabled: true });
    const [a, b, c] = ['A', 'B', 'C'].map((n) => new Mutex(new LockClass(n), dep));
    await dep.task('t1', () => a.run(() => b.run(async () => {})));
    await dep.task('t2', () => b.run(() => c.run(async () => {})));
    const err = await dep.task('t3', () => c.run(() => a.run(async () => {}))).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LockdepError);
    const lines = (err as Error).message.split('\n');
    expect(lines[0]).toMatch(/takes "A" .* while holding "C".*but "A" -> "C" is known/);
    expect(lines.slice(1).map((l) => l.match(/"(\w)" taken at .* while holding "(\w)"/)?.slice(1))).toEqual([
      ['B', 'A'],
      ['C', 'B'],
    ]);
  });

  it('page locks pass in ascending index order and fail out of it or taken twice', () => {
    const dep = new Lockdep({ enabled: true });
    dep.task('ascending', () => {
      const locks = [1, 2, 7].map((i) => pageLock(dep, i));
      for (const l of locks) l.lock();
      expect(dep.heldLocks()).toEqual(['page lock 1', 'page lock 2', 'page lock 7']);
      for (const l of locks.reverse()) l.unlock(); // any release order is fine
      expect(dep.heldLocks()).toEqual([]);
    });
    dep.task('descending', () => {
      pageLock(dep, 5).lock();
      expect(() => pageLock(dep, 3).lock()).toThrow(
        /lock order violation: task "descending" \(#2\) takes "page lock" 3 at .*lockdep\.test\.ts.* while holding "page lock" 5, taken at .*; locks of "page lock" must be taken in ascending order/,
      );
    });
    dep.task('twice', () => {
      const p = { index: 4 };
      dep.acquire(PAGE_LOCK, p, { order: 4 });
      expect(() => dep.acquire(PAGE_LOCK, p, { order: 4 })).toThrow(/possible recursive locking/);
    });
  });

  it('a trylock adds no dependency: it never waits', async () => {
    const dep = new Lockdep({ enabled: true });
    const a = new Mutex(new LockClass('A'), dep);
    const b = new Mutex(new LockClass('B'), dep);
    await dep.task('try', () =>
      b.run(async () => {
        expect(a.trylock()).toBe(true); // B then A, by trylock (as reclaim trylocks pages)
        a.unlock();
      }),
    );
    await dep.task('block', () => a.run(() => b.run(async () => {}))); // A then B: no cycle
  });

  it('the declared order fails the first path that breaks it, and the whole order passes', async () => {
    const dep = new Lockdep({ enabled: true });
    dep.declareOrder(LOCK_ORDER, 'docs/ARCHITECTURE.md');
    const mount = new RwSemaphore(MOUNT_LOCK, dep);
    const invalidate = new RwSemaphore(INVALIDATE_LOCK, dep);
    const i_mmap = new RwSemaphore(I_MMAP_LOCK, dep);
    const pt = new Mutex(DEVICE_PT_LOCK, dep);
    // A fault path and a truncate path, concurrently and in the documented order.
    const fault = (first: number) =>
      dep.task(`fault ${first}`, () =>
        mount.read(() =>
          invalidate.read(async () => {
            const pages = [first, first + 1].map((i) => pageLock(dep, i));
            for (const p of pages) p.lock();
            await tick();
            await i_mmap.read(() => pt.run(async () => tick()));
            for (const p of pages) p.unlock();
          }),
        ),
      );
    const truncate = dep.task('truncate', () =>
      mount.read(() => invalidate.write(() => i_mmap.write(() => pt.run(async () => {})))),
    );
    await Promise.all([fault(0), fault(10), truncate]);
    // Never seen the other way round, but declared: invalidate_lock under a page lock fails at once.
    const err = await dep
      .task('bad', async () => {
        const p = pageLock(dep, 3);
        p.lock();
        await invalidate.read(async () => {});
      })
      .catch((e: unknown) => e);
    expect((err as Error).message).toMatch(
      /takes "invalidate_lock" .* while holding "page lock" 3.*declared order \(docs\/ARCHITECTURE\.md\)/s,
    );
  });

  it('a lock taken outside any task is an error; run() makes a task; off, nothing is checked', async () => {
    const dep = new Lockdep({ enabled: true });
    const a = new Mutex(new LockClass('A'), dep);
    await expect(a.lock()).rejects.toThrow(/taken outside any task/);
    await a.run(async () => expect(dep.heldLocks()).toEqual(['A']));

    const off = new Lockdep({ enabled: false });
    const x = new Mutex(new LockClass('X'), off);
    const y = new Mutex(new LockClass('Y'), off);
    await x.run(() => y.run(async () => {}));
    await y.run(() => x.run(async () => {}));
  });

  it('a lock released by another task (an unlock at completion) leaves the holder', async () => {
    const dep = new Lockdep({ enabled: true });
    const p = { index: 0 };
    let release: () => void = () => {};
    const done = new Promise<void>((r) => {
      release = r;
    });
    const holder = dep.task('reader', async () => {
      dep.acquire(PAGE_LOCK, p, { order: 0 });
      await done;
      expect(dep.heldLocks()).toEqual([]); // the I/O completion unlocked it
    });
    await dep.task('completion', async () => {
      dep.release(PAGE_LOCK, p);
      release();
    });
    await holder;
    expect(() => dep.release(PAGE_LOCK, p)).toThrow(/which no task holds/);
  });
});

describe('sleeping locks', () => {
  it('a mutex hands over in FIFO order and trylock fails while held', async () => {
    const dep = new Lockdep({ enabled: true });
    const m = new Mutex(new LockClass('m'), dep);
    const order: number[] = [];
    const runs = [0, 1, 2, 3].map((i) =>
      dep.task(`t${i}`, () =>
        m.run(async () => {
          order.push(i);
          expect(m.trylock()).toBe(false);
          await tick();
        }),
      ),
    );
    await Promise.all(runs);
    expect(order).toEqual([0, 1, 2, 3]);
    expect(m.isLocked).toBe(false);
  });

  it('an rwsem shares among readers, excludes a writer, and queues a later reader behind a waiting writer', async () => {
    const dep = new Lockdep({ enabled: true });
    const s = new RwSemaphore(new LockClass('s'), dep);
    const events: string[] = [];
    let go: () => void = () => {};
    const gate = new Promise<void>((r) => {
      go = r;
    });
    const r1 = dep.task('r1', () =>
      s.read(async () => {
        events.push('r1 in');
        await gate;
        events.push('r1 out');
      }),
    );
    const r2 = dep.task('r2', () =>
      s.read(async () => void events.push(`r2 in with ${s.nrReaders} readers`)),
    );
    await tick();
    const w = dep.task('w', () => s.write(async () => void events.push(`w in, ${s.nrReaders} readers`)));
    const r3 = dep.task('r3', () => s.read(async () => void events.push('r3 in')));
    await tick();
    expect(s.down_read_trylock()).toBe(false); // a writer waits: new readers queue
    go();
    await Promise.all([r1, r2, w, r3]);
    expect(events).toEqual(['r1 in', 'r2 in with 2 readers', 'r1 out', 'w in, 0 readers', 'r3 in']);
    expect(() => s.up_write()).toThrow(/not write-locked/);
  });
});
