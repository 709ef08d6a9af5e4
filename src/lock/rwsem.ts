/**
 * A read-write semaphore for async tasks (kernel/locking/rwsem.c, as i_mmap_rwsem, invalidate_lock
 * and mmap_lock are): many readers or one writer, in FIFO order of asking, and a reader that asks
 * while a writer waits queues behind it, so writers are not starved. down/up pairs report to lockdep
 * (the read side ordered like the write side: with a fair rwsem a read-read inversion deadlocks as
 * soon as a writer waits between them). `read(fn)` / `write(fn)` are the house style.
 */
import { lockdep as defaultLockdep, type LockClass, type Lockdep } from './lockdep.ts';
import { runHeld } from './mutex.ts';

interface Waiter {
  write: boolean;
  wake: () => void;
}

export class RwSemaphore {
  private readers = 0;
  private writer = false;
  private readonly queue: Waiter[] = [];

  constructor(
    readonly cls: LockClass,
    private readonly dep: Lockdep = defaultLockdep,
  ) {}

  /** Readers holding it now. */
  get nrReaders(): number {
    return this.readers;
  }

  get isWriteLocked(): boolean {
    return this.writer;
  }

  async down_read(): Promise<void> {
    this.dep.acquire(this.cls, this, { read: true });
    if (!this.writer && this.queue.length === 0) {
      this.readers++;
      return;
    }
    await new Promise<void>((wake) => this.queue.push({ write: false, wake }));
  }

  down_read_trylock(): boolean {
    if (this.writer || this.queue.length > 0) return false;
    this.readers++;
    this.dep.acquire(this.cls, this, { read: true, trylock: true });
    return true;
  }

  up_read(): void {
    if (this.readers === 0) throw new Error(`up_read of rwsem "${this.cls.name}" with no reader`);
    this.dep.release(this.cls, this);
    this.readers--;
    if (this.readers === 0) this.wakeNext();
  }

  async down_write(): Promise<void> {
    this.dep.acquire(this.cls, this);
    if (!this.writer && this.readers === 0 && this.queue.length === 0) {
      this.writer = true;
      return;
    }
    await new Promise<void>((wake) => this.queue.push({ write: true, wake }));
  }

  down_write_trylock(): boolean {
    if (this.writer || this.readers > 0 || this.queue.length > 0) return false;
    this.writer = true;
    this.dep.acquire(this.cls, this, { trylock: true });
    return true;
  }

  up_write(): void {
    if (!this.writer) throw new Error(`up_write of rwsem "${this.cls.name}", which is not write-locked`);
    this.dep.release(this.cls, this);
    this.writer = false;
    this.wakeNext();
  }

  /** Hand the semaphore to the head of the queue: one writer, or every reader up to the next writer. */
  private wakeNext(): void {
    const head = this.queue[0];
    if (!head) return;
    if (head.write) {
      this.queue.shift();
      this.writer = true;
      head.wake();
      return;
    }
    while (this.queue.length > 0 && !this.queue[0].write) {
      this.readers++;
      this.queue.shift()!.wake();
    }
  }

  read<T>(fn: () => Promise<T>): Promise<T> {
    return runHeld(
      this.dep,
      this.cls,
      () => this.down_read(),
      () => this.up_read(),
      fn,
    );
  }

  write<T>(fn: () => Promise<T>): Promise<T> {
    return runHeld(
      this.dep,
      this.cls,
      () => this.down_write(),
      () => this.up_write(),
      fn,
    );
  }
}
