/**
 * mm/vmscan.c, reduced to one LRU with second chance (the clock algorithm): reclaim scans from the
 * oldest page; a referenced page has its bit cleared and goes to the tail; a locked page or one under
 * writeback is passed over. A page that can go is unmapped from the CPU first, written back if
 * dirty, then the policy decides: free it (a shadow entry remembers it for workingset_refault), or
 * replace it by a device entry (the device holds its data), or keep it.
 *
 * drop_caches frees pages through the same function but, as Linux's invalidate_mapping_pages, leaves
 * no shadow entries (and clears those of earlier reclaim): only a page that reclaim evicted counts
 * as a refault when it is read again.
 */

import { planted } from '../inject/planted.ts';
import { delete_from_page_cache, replace_page_cache_entry } from './filemap.ts';
import { asMapping, type Mapping } from './mapping.ts';
import {
  PageDirty,
  PageLocked,
  PageReferenced,
  PageUptodate,
  PageWriteback,
  trylock_page,
  unlock_page,
} from './page.ts';
import type { PageCache } from './pagecache.ts';
import { tlb_finish_mmu, tlb_gather_mmu, try_to_unmap } from './rmap.ts';
import { trace_begin } from './trace.ts';
import type { Page } from './types.ts';
import { PG_referenced } from './types.ts';
import { writepage_locked } from './writeback.ts';

/**
 * Who takes a page out: reclaim writes a dirty page back first and leaves a shadow entry for a page
 * it frees; drop_caches leaves dirty host-only pages alone and no shadow entry.
 */
export type ShrinkReason = 'reclaim' | 'drop_caches';

/** Try to take `page` (locked by the caller) out of the host cache. True when the page is gone. */
export async function shrink_page(page: Page, why: ShrinkReason): Promise<boolean> {
  const m = asMapping(page.mapping);
  // A caller that walked a list it made before an await (drop_caches) may hold a page that left
  // the cache meanwhile (reclaimed, replaced by a device entry): nothing of it is left to take.
  if (m.i_pages.get(page.index) !== page) return false;
  const writeDirty = why === 'reclaim';
  // S (dirty, not uptodate): the device holds the data; it never goes to disk from here.
  const stale = PageDirty(page) && !PageUptodate(page);
  if (PageDirty(page) && !stale && !writeDirty) return false;
  const tr = trace_begin(m, [page.index]);
  const work: string[] = [];
  if (page.mapcount > 0) {
    // No CPU thread may still be inside an access to the page once its slot is written or freed.
    const tlb = tlb_gather_mmu();
    try_to_unmap(page, tlb);
    if (!planted('no-shootdown')) await tlb_finish_mmu(m.host, tlb);
    work.push('try_to_unmap');
  }
  if (PageDirty(page) && !stale) {
    await writepage_locked(page);
    work.push('writepage');
  }
  const decision = m.policy.reclaimDecision(m, page);
  if (decision === 'keep') return false;
  const event = why === 'reclaim' ? 'host-reclaim' : 'drop_caches';
  if (decision === 'free') {
    if (stale)
      throw new Error(
        `reclaim: policy ${m.policy.name} frees page ${page.index} whose data is on the device`,
      );
    delete_from_page_cache(page);
    if (why === 'reclaim') remember_shadow(m, page.index);
    tr?.end(event, [...work, 'drop-page']);
    return true;
  }
  // The device copy stays; a device entry takes the page's place in the index.
  replace_page_cache_entry(page, m.policy.makeDeviceEntry(m, page));
  m.host.vmstat.count('workingset_device_entry');
  tr?.end(event, [...work, 'device-entry']);
  return true;
}

/**
 * Shadow entries a file keeps at most, per host page of the budget: as mm/workingset.c bounds its
 * shadow nodes by the LRU's size (about 8 entries a page), so that they follow memory, not the
 * pages a long run ever evicted. The oldest go first.
 */
const SHADOWS_PER_HOST_PAGE = 8;
const MIN_SHADOWS = 1024;

function remember_shadow(m: Mapping, index: number): void {
  m.shadows.delete(index);
  m.shadows.add(index);
  const cap = Math.max(MIN_SHADOWS, SHADOWS_PER_HOST_PAGE * m.host.hostPages);
  if (m.shadows.size <= cap + cap / 4) return;
  // The oldest quarter at once, in one pass: a Set walked from its start after many deletes there
  // skips every deleted slot, and one oldest entry a call would make each eviction cost the cap.
  let drop = m.shadows.size - cap;
  for (const i of m.shadows) {
    if (drop-- <= 0) break;
    m.shadows.delete(i);
  }
}

/** try_to_free_pages: direct reclaim of up to `nr` pages. Returns the pages freed. */
export async function try_to_free_pages(host: PageCache, nr: number): Promise<number> {
  let freed = 0;
  let budget = 2 * host.lru.size + 1;
  while (freed < nr && budget-- > 0 && host.lru.size > 0) {
    const page: Page = host.lru.first()!;
    // Rotate first: whatever happens, the next scan starts with the next page.
    host.lru.delete(page);
    host.lru.add(page);
    host.vmstat.count('pgscan_direct');
    if (PageLocked(page) || PageWriteback(page)) {
      host.vmstat.count('pgrotated');
      continue;
    }
    if (PageReferenced(page)) {
      page.flags &= ~PG_referenced;
      host.vmstat.count('pgactivate');
      continue;
    }
    if (!trylock_page(page)) continue;
    let gone = false;
    try {
      gone = await shrink_page(page, 'reclaim');
    } finally {
      if (!gone) unlock_page(page);
    }
    if (gone) {
      freed++;
      host.vmstat.count('pgsteal_direct');
    }
  }
  return freed;
}
