/**
 * A lock-order validator after the kernel's lockdep (kernel/locking/lockdep.c), for hmmlab's async
 * locks. Locks belong to classes (mount, invalidate_lock, page lock, ...); whenever a task takes a
 * lock of class B while it holds one of class A, the dependency A -> B is recorded in a graph, with
 * where each was taken. A new dependency that closes a cycle (B -> ... -> A is known: some other
 * task, now or earlier, took them the other way round) is a possible deadlock and throws at once,
 * before the task waits, even if the two tasks never actually met. Two locks of one class nest
 * only if the class is `ascending` and they are taken in ascending order (page locks by index);
 * anything else of one class twice is recursive locking. The order docs/ARCHITECTURE.md writes
 * down can be declared up front (order.ts), so a path that breaks it fails the first time it runs.
 *
 * A task is a logical thread of control: `lockdep.task(name, fn)` runs fn and every continuation it
 * makes with a fresh held-lock stack (AsyncLocalStorage), the way each kernel task has its own.
 * A task that forks concurrent work should start a task per branch, or the branches share a stack.
 * Trylocks record the lock as held but add no dependency (they cannot wait).
 *
 * Off unless HMMLAB_LOCKDEP=1 (vitest.config.ts turns it on for the tests) or `enabled` is set;
 * off, every hook returns at its first line.
 */
import { AsyncLocalStorage } from 'node:async_hooks';

export interface LockClassOptions {
  /** Locks of this class may nest in strictly ascending `order` (page locks by index). */
  ascending?: boolean;
}

export class LockClass {
  readonly ascending: boolean;
  constructor(
    readonly name: string,
    o: LockClassOptions = {},
  ) {
    this.ascending = o.ascending ?? false;
  }
}

/** A lock-order violation: a bug in the code that took the locks, never a user error. */
export class LockdepError extends Error {
  override readonly name = 'LockdepError';
}

export interface AcquireOptions {
  /** Position among locks of an ascending class (a page's index). */
  order?: number;
  /** A trylock that succeeded: held, but no dependency (it never waited). */
  trylock?: boolean;
  /** Taken shared (an rwsem's read side); ordered like an exclusive hold. */
  read?: boolean;
  /**
   * Outside any task the acquisition is not tracked instead of an error: for page locks, which a
   * test may take by hand (trylock_page) outside any operation. Inside a task it is checked as usual.
   */
  anyTask?: boolean;
}

interface Held {
  readonly cls: LockClass;
  readonly lock: object;
  readonly order: number | undefined;
  readonly read: boolean;
  readonly task: LockTask;
  /** Where it was taken (formatted only for a report). */
  readonly site: Error | string;
}

class LockTask {
  readonly held: Held[] = [];
  constructor(
    readonly name: string,
    readonly id: number,
  ) {}
}

/** Dependency from -> to: `to` was taken while `from` was held, first seen here. */
interface Dependency {
  readonly from: LockClass;
  readonly to: LockClass;
  readonly fromSite: Error | string;
  readonly toSite: Error | string;
  readonly task: string;
  /** From declareOrder, not seen at run time. */
  readonly declared: boolean;
}

/** The first stack frame outside src/lock/: where the caller took the lock. */
function where(site: Error | string): string {
  if (typeof site === 'string') return site;
  const frames = (site.stack ?? '').split('\n').slice(1);
  const f = frames.find((l) => !/[/\\]src[/\\]lock[/\\]/.test(l) && !/node:internal/.test(l)) ?? frames[0];
  return f ? f.trim().replace(/^at /, '') : '(unknown)';
}

function lockName(cls: LockClass, order: number | undefined): string {
  return order === undefined ? `"${cls.name}"` : `"${cls.name}" ${order}`;
}

export class Lockdep {
  enabled: boolean;
  private readonly current = new AsyncLocalStorage<LockTask>();
  /** after.get(A).get(B): the dependency A -> B. */
  private readonly after = new Map<LockClass, Map<LockClass, Dependency>>();
  /** Holders of each lock, for a release from another task (an unlock at I/O completion). */
  private readonly holders = new Map<object, Held[]>();
  private nextTask = 1;
  private readonly declared: { classes: readonly LockClass[]; where: string }[] = [];

  constructor(o: { enabled?: boolean } = {}) {
    this.enabled = o.enabled ?? process.env.HMMLAB_LOCKDEP === '1';
  }

  /** Run fn as a new task, with its own held-lock stack. */
  task<T>(name: string, fn: () => T): T {
    if (!this.enabled) return fn();
    return this.current.run(new LockTask(name, this.nextTask++), fn);
  }

  /** Run fn in the current task, or in a new one named `name` when there is none. */
  inTask<T>(name: string, fn: () => T): T {
    if (!this.enabled || this.current.getStore()) return fn();
    return this.task(name, fn);
  }

  /**
   * The orders in `classes` (each before every later one) as known dependencies, so that the
   * first path taking two of them the other way round fails.
   */
  declareOrder(classes: readonly LockClass[], where: string): void {
    this.declared.push({ classes, where });
    this.addDeclared(classes, where);
  }

  private addDeclared(classes: readonly LockClass[], where: string): void {
    for (let i = 0; i < classes.length; i++) {
      for (let j = i + 1; j < classes.length; j++) {
        this.addDependency(classes[i], classes[j], where, where, `declared order (${where})`, null, true);
      }
    }
  }

  /** Called before a task waits for a lock (or after a trylock succeeded). Throws LockdepError. */
  acquire(cls: LockClass, lock: object, o: AcquireOptions = {}): void {
    if (!this.enabled) return;
    const task = this.current.getStore();
    if (!task) {
      if (o.anyTask) return;
      throw new LockdepError(
        `lockdep: ${lockName(cls, o.order)} taken outside any task: run the caller in lockdep.task()`,
      );
    }
    const held: Held = {
      cls,
      lock,
      order: o.order,
      read: o.read ?? false,
      task,
      site: new Error('acquired here'),
    };
    if (!o.trylock) for (const h of task.held) this.check(task, h, held);
    task.held.push(held);
    const hs = this.holders.get(lock);
    if (hs) hs.push(held);
    else this.holders.set(lock, [held]);
  }

  /**
   * Called when a lock is released, by the task that holds it or (an unlock at completion) another.
   * `untracked`: a lock that may have been taken outside any task (AcquireOptions.anyTask): no
   * holder is then not an error.
   */
  release(cls: LockClass, lock: object, untracked = false): void {
    if (!this.enabled) return;
    const task = this.current.getStore();
    const hs = this.holders.get(lock);
    const h = hs?.find((x) => x.task === task) ?? hs?.[0];
    if (!hs || !h) {
      if (untracked) return;
      throw new LockdepError(`lockdep: release of "${cls.name}", which no task holds`);
    }
    hs.splice(hs.indexOf(h), 1);
    if (hs.length === 0) this.holders.delete(lock);
    h.task.held.splice(h.task.held.lastIndexOf(h), 1);
  }

  /** lockdep_assert_held: the current task holds `lock`. */
  assertHeld(cls: LockClass, lock: object): void {
    if (!this.enabled) return;
    const task = this.current.getStore();
    if (!task?.held.some((h) => h.lock === lock)) {
      throw new LockdepError(`lockdep: "${cls.name}" is not held by task ${this.taskName(task)}`);
    }
  }

  /** The current task's held locks, outermost first ("page lock 3"). */
  heldLocks(): string[] {
    const task = this.current.getStore();
    return (task?.held ?? []).map((h) => (h.order === undefined ? h.cls.name : `${h.cls.name} ${h.order}`));
  }

  /** Forget every learned dependency and hold, keeping the declared orders (between tests). */
  reset(): void {
    this.after.clear();
    this.holders.clear();
    for (const d of this.declared) this.addDeclared(d.classes, d.where);
  }

  private taskName(task: LockTask | undefined): string {
    return task ? `"${task.name}" (#${task.id})` : '(none)';
  }

  private check(task: LockTask, h: Held, next: Held): void {
    // Messages are built only for a report: formatting a stack costs far more than the check.
    const what = () =>
      `task ${this.taskName(task)} takes ${lockName(next.cls, next.order)} at ${where(next.site)} ` +
      `while holding ${lockName(h.cls, h.order)}, taken at ${where(h.site)}`;
    if (h.lock === next.lock) {
      throw new LockdepError(`lockdep: possible recursive locking: ${what()}`);
    }
    if (h.cls === next.cls) {
      if (h.cls.ascending && h.order !== undefined && next.order !== undefined && next.order > h.order)
        return;
      const rule = h.cls.ascending
        ? `locks of "${h.cls.name}" must be taken in ascending order`
        : `two locks of "${h.cls.name}" nest only in a class that orders them`;
      throw new LockdepError(`lockdep: lock order violation: ${what()}; ${rule}`);
    }
    this.addDependency(h.cls, next.cls, h.site, next.site, this.taskName(task), what);
  }

  private addDependency(
    from: LockClass,
    to: LockClass,
    fromSite: Error | string,
    toSite: Error | string,
    task: string,
    what: (() => string) | null = null,
    declared = false,
  ): void {
    const out = this.after.get(from);
    if (out?.has(to)) return;
    const path = this.path(to, from);
    if (path) {
      const chain = path
        .map((d) =>
          d.declared
            ? `  ${d.task}: "${d.from.name}" before "${d.to.name}"`
            : `  ${d.task}: "${d.to.name}" taken at ${where(d.toSite)} while holding "${d.from.name}", taken at ${where(d.fromSite)}`,
        )
        .join('\n');
      throw new LockdepError(
        `lockdep: possible circular locking dependency: ${what ? what() : `"${from.name}" -> "${to.name}"`}; ` +
          `but "${to.name}" -> "${from.name}" is known:\n${chain}`,
      );
    }
    const dep: Dependency = { from, to, fromSite, toSite, task, declared };
    if (out) out.set(to, dep);
    else this.after.set(from, new Map([[to, dep]]));
  }

  /** A chain of dependencies from `a` to `b` (breadth first: the shortest), or null. */
  private path(a: LockClass, b: LockClass): Dependency[] | null {
    const via = new Map<LockClass, Dependency | null>([[a, null]]);
    const queue = [a];
    while (queue.length > 0) {
      const c = queue.shift()!;
      if (c === b) {
        const chain: Dependency[] = [];
        for (let d = via.get(c); d; d = via.get(d.from)) chain.unshift(d);
        return chain;
      }
      for (const [n, d] of this.after.get(c) ?? []) {
        if (!via.has(n)) {
          via.set(n, d);
          queue.push(n);
        }
      }
    }
    return null;
  }
}

/** The validator every lock of the engine reports to. */
export const lockdep = new Lockdep();
