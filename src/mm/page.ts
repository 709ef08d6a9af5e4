/**
 * struct page: flags, mapcount, and a view of its pool slot. Flag helpers are named as
 * include/linux/page-flags.h names them. PG_locked is a real sleeping lock: lock_page waits.
 *
 * A device entry (the index's data lives on the device: no host page) has a lock of its own, as
 * Linux's device-private page has its PG_locked: every path that works on an entry without a host
 * page (fault service, writeback, bounce reads and writes, eviction, readpage replacing it by a
 * page, truncate) holds it, and rechecks that the entry still stands at its index once it has it.
 *
 * Lock order (docs/ARCHITECTURE.md): page locks, and entry locks among them, are taken in
 * ascending (mapping, index) order, or by trylock; every one reports to lockdep (src/lock) under
 * the class "page lock". A page is born locked (add_to_page_cache): it counts as a trylock.
 */
import { lockdep } from '../lock/lockdep.ts';
import { PAGE_LOCK, pageLockOrder } from '../lock/order.ts';
import type { AddressSpace, DeviceEntry, Page } from './types.ts';
import { PG_dirty, PG_locked, PG_lru, PG_referenced, PG_uptodate, PG_writeback } from './types.ts';

export class HostPage implements Page {
  readonly kind = 'page' as const;
  flags = 0;
  mapcount = 0;
  /** Waiters for PG_locked (wait_on_page_locked). */
  waiters: (() => void)[] = [];
  constructor(
    readonly mapping: AddressSpace,
    readonly index: number,
    readonly slot: number,
    readonly data: Uint8Array,
  ) {}
}

export const PageLocked = (p: Page): boolean => (p.flags & PG_locked) !== 0;
export const PageUptodate = (p: Page): boolean => (p.flags & PG_uptodate) !== 0;
export const PageDirty = (p: Page): boolean => (p.flags & PG_dirty) !== 0;
export const PageWriteback = (p: Page): boolean => (p.flags & PG_writeback) !== 0;
export const PageLRU = (p: Page): boolean => (p.flags & PG_lru) !== 0;
export const PageReferenced = (p: Page): boolean => (p.flags & PG_referenced) !== 0;
export const page_mapped = (p: Page): boolean => p.mapcount > 0;

const order = (m: AddressSpace, index: number) => ({ order: pageLockOrder(m.id, index), anyTask: true });

/** Waiters of pages that are not HostPages (a policy's own Page objects in tests). */
const otherWaiters = new WeakMap<object, (() => void)[]>();

function waitersOf(p: Page): (() => void)[] {
  if (p instanceof HostPage) return p.waiters;
  let w = otherWaiters.get(p);
  if (!w) {
    w = [];
    otherWaiters.set(p, w);
  }
  return w;
}

export function trylock_page(p: Page): boolean {
  if (PageLocked(p)) return false;
  p.flags |= PG_locked;
  lockdep.acquire(PAGE_LOCK, p, { ...order(p.mapping, p.index), trylock: true });
  return true;
}

/** A page created locked (add_to_page_cache): no one else can hold it, so it counts as a trylock. */
export function page_born_locked(p: Page): void {
  p.flags |= PG_locked;
  lockdep.acquire(PAGE_LOCK, p, { ...order(p.mapping, p.index), trylock: true });
}

export async function lock_page(p: Page): Promise<void> {
  if (!PageLocked(p)) {
    trylock_page(p);
    return;
  }
  // Checked before it waits: an order that could deadlock throws instead of hanging.
  lockdep.acquire(PAGE_LOCK, p, order(p.mapping, p.index));
  while (PageLocked(p)) await new Promise<void>((resolve) => waitersOf(p).push(resolve));
  p.flags |= PG_locked;
}

export function unlock_page(p: Page): void {
  p.flags &= ~PG_locked;
  lockdep.release(PAGE_LOCK, p, true);
  const w = waitersOf(p);
  if (w.length > 0) w.shift()!();
  wake_page_unlock_waiters();
}

/** Tasks waiting for any page to be unlocked (reclaim that found every page locked). */
let anyUnlockWaiters: (() => void)[] = [];

function wake_page_unlock_waiters(): void {
  if (anyUnlockWaiters.length === 0) return;
  const w = anyUnlockWaiters;
  anyUnlockWaiters = [];
  for (const f of w) f();
}

/**
 * Wait until some page is unlocked (or writeback on it ends), at most `timeoutMs`: what direct
 * reclaim does when every page it scanned was locked by other tasks. True when one was.
 */
export function wait_on_page_unlock_any(timeoutMs: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    let done = false;
    const timer = setTimeout(() => {
      if (done) return;
      done = true;
      resolve(false);
    }, timeoutMs);
    anyUnlockWaiters.push(() => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** end_page_writeback: PG_writeback cleared; whoever waits for a page to become reclaimable is told. */
export function end_page_writeback(p: Page): void {
  p.flags &= ~PG_writeback;
  wake_page_unlock_waiters();
}

// ---- device entries ----

interface EntryLock {
  locked: boolean;
  waiters: (() => void)[];
}

const entryLocks = new WeakMap<DeviceEntry, EntryLock>();

function entryLock(e: DeviceEntry): EntryLock {
  let l = entryLocks.get(e);
  if (!l) {
    l = { locked: false, waiters: [] };
    entryLocks.set(e, l);
  }
  return l;
}

export function trylock_entry(m: AddressSpace, e: DeviceEntry): boolean {
  const l = entryLock(e);
  if (l.locked) return false;
  l.locked = true;
  lockdep.acquire(PAGE_LOCK, e, { ...order(m, e.index), trylock: true });
  return true;
}

/** Lock the device entry `e` of `m` (the caller rechecks that it still stands at its index). */
export async function lock_entry(m: AddressSpace, e: DeviceEntry): Promise<void> {
  const l = entryLock(e);
  if (!l.locked) {
    trylock_entry(m, e);
    return;
  }
  lockdep.acquire(PAGE_LOCK, e, order(m, e.index));
  while (l.locked) await new Promise<void>((resolve) => l.waiters.push(resolve));
  l.locked = true;
}

export function unlock_entry(e: DeviceEntry): void {
  const l = entryLock(e);
  l.locked = false;
  lockdep.release(PAGE_LOCK, e, true);
  const w = l.waiters.shift();
  if (w) w();
}

/**
 * Lock what stands at `index` of `m`, a page or a device entry, and look again until what was
 * locked still stands there (reclaim may leave a device entry for the page meanwhile, eviction
 * bring the page home): what is locked, or null when nothing stands there. A page `skip` says is
 * not worth waiting for is left unlocked (null).
 */
export async function lock_index(
  m: AddressSpace,
  index: number,
  skip?: (page: Page) => boolean,
): Promise<Page | DeviceEntry | null> {
  for (;;) {
    const e = m.i_pages.get(index);
    if (!e) return null;
    if (e.kind === 'device') {
      await lock_entry(m, e);
      if (m.i_pages.get(index) === e) return e;
      unlock_entry(e);
      continue;
    }
    if (skip?.(e)) return null;
    await lock_page(e);
    if (m.i_pages.get(index) === e) return e;
    unlock_page(e);
  }
}

/** Flag letters for snapshots: L locked, U uptodate, D dirty, W writeback, R referenced, A lru. */
export function flagLetters(p: Page): string {
  return (
    (PageLocked(p) ? 'L' : '') +
    (PageUptodate(p) ? 'U' : '') +
    (PageDirty(p) ? 'D' : '') +
    (PageWriteback(p) ? 'W' : '') +
    (PageReferenced(p) ? 'R' : '') +
    (PageLRU(p) ? 'A' : '')
  );
}
