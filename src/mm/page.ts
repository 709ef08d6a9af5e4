/**
 * struct page: flags, mapcount, and a view of its pool slot. Flag helpers are named as
 * include/linux/page-flags.h names them. PG_locked is a real sleeping lock: lock_page waits.
 */
import type { AddressSpace, Page } from './types.ts';
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

export function trylock_page(p: Page): boolean {
  if (PageLocked(p)) return false;
  p.flags |= PG_locked;
  return true;
}

export async function lock_page(p: Page): Promise<void> {
  while (!trylock_page(p)) {
    await new Promise<void>((resolve) => (p as HostPage).waiters.push(resolve));
  }
}

export function unlock_page(p: Page): void {
  p.flags &= ~PG_locked;
  const w = (p as HostPage).waiters;
  if (w && w.length > 0) w.shift()!();
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
