/**
 * mm/truncate.c: dropping pages from the cache for truncate, punch hole, direct-I/O writes and
 * unmount. CPU PTEs go first (unmap_mapping_range), then the policy drops device copies and device
 * entries of the range, then the pages themselves (dirty or not: the caller has written back what
 * must survive). A page cut in part is kept and the cut bytes zeroed, after the policy has brought
 * back and revoked the device's copy.
 */

import type { InvalidateWhy } from '../policy/policy.ts';
import { bounce_write, delete_from_page_cache, folio_mark_dirty, read_cache_page_locked } from './filemap.ts';
import { asMapping } from './mapping.ts';
import { lock_index, unlock_entry, unlock_page } from './page.ts';
import { tlb_finish_mmu, tlb_gather_mmu, try_to_unmap } from './rmap.ts';
import { trace_begin } from './trace.ts';
import type { AddressSpace, DeviceEntry, Page } from './types.ts';

/**
 * truncate_inode_pages_range: every page and device entry of [first, last] leaves the cache.
 * Returns the host pages dropped.
 */
export async function truncate_inode_pages_range(
  mapping: AddressSpace,
  first: number,
  last: number,
  why: InvalidateWhy = 'invalidate',
): Promise<number> {
  const m = asMapping(mapping);
  const inRange = (i: number) => i >= first && i <= last;
  const tr = trace_begin(m, [...m.i_pages.keys()].filter(inRange));
  const unmapped = new Set<number>();
  const gone = new Set<number>();
  // Every page and device entry of the range locked first, in index order, each rechecked: no
  // other path (writeback, reclaim, device eviction, fault service) is then halfway through one,
  // and the policy's copies of the range are all ours to revoke.
  const pages: Page[] = [];
  const entries: DeviceEntry[] = [];
  let dropped = 0;
  try {
    for (const i of [...m.i_pages.keys()].filter(inRange).sort((a, b) => a - b)) {
      // What stands at i may change while we wait for its lock: what we lock must still stand,
      // or the policy would revoke the copy of whatever replaced it and leave that behind.
      const e = await lock_index(m, i);
      if (e?.kind === 'device') entries.push(e);
      else if (e) pages.push(e);
    }
    // CPU PTEs first, and the shootdown, before the device copies and the pages go.
    const tlb = tlb_gather_mmu();
    for (const p of pages) {
      if (p.mapcount === 0) continue;
      try_to_unmap(p, tlb);
      unmapped.add(p.index);
    }
    await tlb_finish_mmu(m.host, tlb);
    await m.policy.invalidateRange(m, first, last, why);
    for (const e of entries.splice(0)) {
      if (m.i_pages.get(e.index) === e) {
        m.i_pages.delete(e.index);
        gone.add(e.index);
      }
      unlock_entry(e);
    }
    for (const p of pages.splice(0)) {
      delete_from_page_cache(p); // unlocks it
      gone.add(p.index);
      dropped++;
    }
  } finally {
    for (const p of pages) unlock_page(p);
    for (const e of entries) unlock_entry(e);
  }
  tr?.end(why, (i) => (gone.has(i) ? [...(unmapped.has(i) ? ['try_to_unmap'] : []), 'drop-page'] : null));
  for (const i of [...m.shadows]) if (inRange(i)) m.shadows.delete(i);
  m.host.vmstat.count('pginvalidate', dropped);
  return dropped;
}

/**
 * Zero bytes [from, to) of page `index` where it is cached (resident, or a device entry: brought
 * back first, or zeroed through the policy's bounce page where it has one). The CPU writes the
 * page, so the policy first brings back and then revokes A'.
 */
export async function zero_page_range(
  mapping: AddressSpace,
  index: number,
  from: number,
  to: number,
): Promise<void> {
  const m = asMapping(mapping);
  const e = m.i_pages.get(index);
  if (!e || from >= to) return;
  // A device entry the policy can write through its bounce page: the zeros go there.
  if (e.kind === 'device') {
    const done = await bounce_write(m, index, 1, index * m.pageSize + from, new Uint8Array(to - from));
    if (done.has(index)) return;
  }
  const page = await read_cache_page_locked(m, index);
  try {
    await m.policy.cpuNeedsData(m, [page], 'truncate');
    await m.policy.cpuWillWrite(m, [page], 'truncate');
    const tr = trace_begin(m, [index]);
    page.data.fill(0, from, to);
    // The zeros are the page's data now: dirty, so that no reclaim brings the disk's old bytes
    // back before the truncate or punch has cut the disk too.
    folio_mark_dirty(page);
    tr?.end('cpu-write', ['zero-range']);
  } finally {
    unlock_page(page);
  }
}

/**
 * truncate_setsize + truncate_pagecache: shrinking zeroes the tail of the new last page and drops
 * every page past it (their blocks freed); growing only moves i_size (the new range reads as zeros:
 * the cached tail past the old EOF is kept zero on every path).
 */
export async function truncate_setsize(mapping: AddressSpace, size: number): Promise<void> {
  const m = asMapping(mapping);
  const ps = m.pageSize;
  const old = m.size;
  if (size < old) {
    // The tail of the new last page is zeroed first, i_size still the old one: all of the truncate
    // that can fail (the page read in, or brought back from the device) comes before it cuts
    // anything, and a writeback that reclaim runs meanwhile still writes the pages past the new
    // EOF whole. A truncate that fails here has changed nothing; run again, it does it all.
    if (size % ps !== 0) await zero_page_range(m, Math.floor(size / ps), size % ps, ps);
    m.size = size;
    const firstGone = Math.ceil(size / ps);
    await truncate_inode_pages_range(m, firstGone, Number.MAX_SAFE_INTEGER);
    m.a_ops.free_blocks(firstGone, Number.MAX_SAFE_INTEGER);
  }
  m.size = size;
  await m.a_ops.set_size(size);
}

/**
 * fallocate(PUNCH_HOLE | KEEP_SIZE) over [off, off + len), clamped to EOF: the edge pages are zeroed
 * in part, whole pages leave the cache and give back their blocks, and the backing file gets zeros.
 */
export async function punch_hole(mapping: AddressSpace, off: number, len: number): Promise<void> {
  const m = asMapping(mapping);
  const ps = m.pageSize;
  const end = Math.min(off + len, m.size);
  if (end <= off) return;
  const firstFull = Math.ceil(off / ps);
  const lastFull = Math.floor(end / ps) - 1;
  const edges = new Set([Math.floor(off / ps), Math.floor((end - 1) / ps)]);
  for (const i of edges) {
    if (i >= firstFull && i <= lastFull) continue;
    const pageStart = i * ps;
    await zero_page_range(
      m,
      i,
      Math.max(off, pageStart) - pageStart,
      Math.min(end, pageStart + ps) - pageStart,
    );
  }
  if (firstFull <= lastFull) {
    await truncate_inode_pages_range(m, firstFull, lastFull);
    m.a_ops.free_blocks(firstFull, lastFull);
  }
  await m.a_ops.zero_range(off, end - off);
}
