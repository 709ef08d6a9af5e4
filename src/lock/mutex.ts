/**
 * A sleeping mutex for async tasks (kernel/locking/mutex.c without the spinning): FIFO hand-off, so
 * waiters get it in the order they asked. Every lock and unlock reports to lockdep (checked before
 * the task waits, so an inversion throws instead of hanging). `run(fn)` is the house style: it holds the mutex around fn, in the caller's lockdep task
 * or a new one.
 */
import { lockdep as defaultLockdep, type LockClass, type Lockdep } from './lockdep.ts';

export class Mutex {
  private locked = false;
  private readonly waiters: (() => void)[] = [];

  constructor(
    readonly cls: LockClass,
    private readonly dep: Lockdep = defaultLockdep,
  ) {}

  get isLocked(): boolean {
    return this.locked;
  }

  /** mutex_lock: resolves holding the mutex. */
  async lock(): Promise<void> {
    this.dep.acquire(this.cls, this);
    if (!this.locked) {
      this.locked = true;
      return;
    }
    // unlock() hands the mutex straight to the first waiter: `locked` stays true.
    await new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  /** mutex_trylock: true and held, or false at once. */
  trylock(): boolean {
    if (this.locked) return false;
    this.locked = true;
    this.dep.acquire(this.cls, this, { trylock: true });
    return true;
  }

  unlock(): void {
    if (!this.locked) throw new Error(`unlock of mutex "${this.cls.name}", which is not locked`);
    this.dep.release(this.cls, this);
    const next = this.waiters.shift();
    if (next) next();
    else this.locked = false;
  }

  /** fn with the mutex held; released however fn ends. */
  run<T>(fn: () => Promise<T>): Promise<T> {
    return runHeld(
      this.dep,
      this.cls,
      () => this.lock(),
      () => this.unlock(),
      fn,
    );
  }
}

/** fn between take() and drop(), in the current lockdep task or a new one named for the class. */
export function runHeld<T>(
  dep: Lockdep,
  cls: LockClass,
  take: () => Promise<void>,
  drop: () => void,
  fn: () => Promise<T>,
): Promise<T> {
  return dep.inTask(cls.name, async () => {
    await take();
    try {
      return await fn();
    } finally {
      drop();
    }
  });
}
