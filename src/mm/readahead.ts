/**
 * mm/readahead.c, the on-demand part: a miss that continues the last read or lands at the end of
 * the current window is sequential, and the window grows (4x while small, then 2x, up to the max);
 * any other miss is random: the window resets and only the requested pages are read.
 */
import { batchPages, page_cache_alloc, readpage, readpages } from './filemap.ts';
import type { Mapping } from './mapping.ts';
import { trylock_entry, trylock_page, unlock_entry, unlock_page } from './page.ts';
import type { DeviceEntry, Page } from './types.ts';
import { PG_uptodate } from './types.ts';

/** read_ahead_kb, as Linux defaults it. */
export const READ_AHEAD_KB = 128;

/** The largest window: read_ahead_kb worth of pages, and no more than half the host-page budget. */
export function ra_max(m: Mapping): number {
  return Math.max(
    1,
    Math.min(Math.floor((READ_AHEAD_KB * 1024) / m.pageSize), Math.floor(m.host.hostPages / 2)),
  );
}

function roundup_pow_of_two(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/** get_init_ra_size: the first window, from the request size. */
export function get_init_ra_size(req: number, max: number): number {
  const n = roundup_pow_of_two(req);
  if (n <= max / 32) return Math.min(n * 4, max);
  if (n <= max / 4) return Math.min(n * 2, max);
  return max;
}

/** get_next_ra_size: the next window of a sequential stream. */
export function get_next_ra_size(cur: number, max: number): number {
  if (cur < max / 16) return Math.min(4 * cur, max);
  if (cur <= max / 2) return Math.min(2 * cur, max);
  return max;
}

/**
 * page_cache_sync_readahead: `index` missed, and the reader wants `req` pages from there. Decides
 * the window and reads its absent pages in (one pread each, each unlocked as soon as it is read, so
 * that reclaim may take them under a tiny budget).
 */
export async function page_cache_sync_readahead(m: Mapping, index: number, req: number): Promise<void> {
  const ra = m.ra;
  const max = ra_max(m);
  const eof = Math.ceil(m.size / m.pageSize);
  if (index >= eof) return;
  const sequential =
    (index === 0 && ra.prev_index < 0) ||
    index === ra.prev_index + 1 ||
    index === ra.prev_index ||
    (ra.size > 0 && index === ra.start + ra.size);
  let size: number;
  if (sequential) {
    size = ra.size > 0 && index !== 0 ? get_next_ra_size(ra.size, max) : get_init_ra_size(req, max);
    ra.start = index;
    ra.size = size;
    m.host.vmstat.count('ra_sync');
  } else {
    // Random: read only what was asked and do not pollute the window.
    m.host.vmstat.count('ra_random');
    ra.start = index;
    ra.size = 0;
    size = Math.min(req, max);
  }
  await do_page_cache_ra(m, index, Math.min(index + size, eof));
}

/**
 * Read the absent pages of [start, end); device entries are pulled from the device in one batch
 * (policy.readpagesFromDevice, where the policy has it); resident pages that hold stale data are
 * handed to the policy.
 */
async function do_page_cache_ra(m: Mapping, start: number, end: number): Promise<void> {
  const stale: Page[] = [];
  const entries: DeviceEntry[] = [];
  const fromDevice: Page[] = [];
  // Absent pages are read a run at a time (one readpages: a preadv), at most batchPages a run so
  // that a tiny budget still has pages for reclaim to take.
  let run: number[] = [];
  const flush = async () => {
    const r = run;
    run = [];
    if (r.length) await ra_readpages(m, r);
  };
  const cap = batchPages(m.host);
  try {
    for (let i = start; i < end; i++) {
      // The run is read before page i is looked at: reading it may reclaim (and change) page i.
      if (run.length >= cap || m.i_pages.has(i)) await flush();
      const e = m.i_pages.get(i);
      if (e?.kind === 'device' && m.policy.readpagesFromDevice) {
        // Readahead takes what it can: an entry another task holds is left to its own readpage.
        if (!trylock_entry(m, e)) continue;
        let page: Page | null;
        try {
          page = await page_cache_alloc(m, i, e); // locked; it replaces the entry
        } catch (err) {
          unlock_entry(e);
          throw err;
        }
        if (!page) {
          unlock_entry(e);
          continue;
        }
        fromDevice.push(page);
        entries.push(e);
        continue;
      }
      if (e) {
        if (e.kind === 'page' && !(e.flags & PG_uptodate) && trylock_page(e)) stale.push(e);
        continue;
      }
      run.push(i);
    }
    await flush();
    if (entries.length) await ra_readpages_from_device(m, entries, fromDevice);
  } catch (err) {
    // Pages not filled give their index back to the device entry they replaced.
    fromDevice.forEach((p, k) => {
      if (m.i_pages.get(p.index) !== p) return;
      if (p.flags & PG_uptodate) return;
      if (gone.has(entries[k])) m.i_pages.delete(p.index);
      else m.i_pages.set(p.index, entries[k]);
      m.host.lru.delete(p);
      m.host.pool.release(p.slot);
    });
    for (const p of stale) unlock_page(p);
    throw err;
  } finally {
    for (const p of fromDevice) unlock_page(p);
    for (const e of entries) unlock_entry(e);
  }
  if (stale.length === 0) return;
  try {
    await m.policy.cpuNeedsData(m, stale, 'readahead');
  } finally {
    for (const p of stale) unlock_page(p);
  }
}

/** The batch of device entries: from the device, and from the disk where it no longer has them. */
async function ra_readpages_from_device(m: Mapping, entries: DeviceEntry[], pages: Page[]): Promise<void> {
  const ok = await m.policy.readpagesFromDevice!(m, entries, pages);
  for (const [k, p] of pages.entries()) {
    if (ok[k]) continue;
    gone.add(entries[k]); // the device no longer holds it: on a failure the entry does not come back
    await readpage(m, p);
  }
}

/** Device entries whose data the policy said it no longer holds (readpagesFromDevice answered false). */
const gone = new WeakSet<DeviceEntry>();

/**
 * A run of absent pages read from disk by readahead (one readpages), unlocked at once. A page that
 * another task put in the cache meanwhile is left to it.
 */
async function ra_readpages(m: Mapping, indices: number[]): Promise<void> {
  const pages: Page[] = [];
  try {
    for (const i of indices) {
      const page = await page_cache_alloc(m, i, undefined);
      if (page) pages.push(page);
    }
    if (pages.length) await readpages(m, pages);
  } catch (err) {
    for (const page of pages) {
      m.i_pages.delete(page.index);
      m.host.lru.delete(page);
      m.host.pool.release(page.slot);
    }
    throw err;
  } finally {
    for (const page of pages) unlock_page(page);
  }
  m.host.vmstat.count('pgra', pages.length);
}
