/**
 * mm/filemap.c: finding, creating and reading in page-cache pages; read(2) and write(2) through
 * the cache. Every path works a small batch of pages at a time (locked while it works on them),
 * so that a host-page budget of a few pages still serves a read or write of any length.
 */

import { HmmlabError } from '../errors.ts';
import type { BounceWrite } from '../policy/policy.ts';
import { asMapping, type Mapping } from './mapping.ts';
import {
  HostPage,
  lock_entry,
  lock_index,
  PageDirty,
  PageLocked,
  PageUptodate,
  PageWriteback,
  page_born_locked,
  unlock_entry,
  unlock_page,
  wait_on_page_unlock_any,
} from './page.ts';
import type { PageCache } from './pagecache.ts';
import { page_cache_sync_readahead } from './readahead.ts';
import { trace_begin } from './trace.ts';
import type { AddressSpace, DeviceEntry, Page } from './types.ts';
import { PG_dirty, PG_lru, PG_referenced, PG_uptodate } from './types.ts';
import { try_to_free_pages } from './vmscan.ts';

/** Pages one path locks at a time: a quarter of the budget, so reclaim always has others to take. */
export function batchPages(host: PageCache): number {
  return Math.max(1, Math.min(64, Math.floor(host.hostPages / 4)));
}

/**
 * How long direct reclaim waits for another task to unlock a page when every page it scanned was
 * locked or under writeback (concurrent faults, kernels' fault service, writeback), and how long
 * it goes on trying in all before it gives up (EIO).
 */
const RECLAIM_WAIT_MS = 2000;
const RECLAIM_GIVE_UP_MS = 30_000;

/** Whether some page of the LRU is locked or under writeback: another task may let it go soon. */
function pages_busy(host: PageCache): boolean {
  for (const p of host.lru) if (PageLocked(p) || PageWriteback(p)) return true;
  return false;
}

/**
 * A free pool slot, reclaiming (direct reclaim) until one frees up. When every page is locked or
 * under writeback, it waits for some page to be unlocked (another task's) and tries again; EIO
 * when none is within RECLAIM_WAIT_MS (the pages are the caller's own, or kept by the policy).
 */
async function alloc_slot(host: PageCache): Promise<number> {
  const deadline = performance.now() + RECLAIM_GIVE_UP_MS;
  for (;;) {
    const slot = host.pool.alloc();
    if (slot >= 0) return slot;
    const freed = await try_to_free_pages(host, batchPages(host));
    if (freed > 0 || host.pool.nrFree > 0) continue;
    if (pages_busy(host) && performance.now() < deadline && (await wait_on_page_unlock_any(RECLAIM_WAIT_MS)))
      continue;
    throw new HmmlabError(
      'EIO',
      `out of host pages: all ${host.hostPages} pages are locked, under writeback or kept by the policy`,
    );
  }
}

/** __filemap_add_folio of `slot` at `index`: a new locked, not-uptodate page on the LRU. */
function add_to_page_cache(m: Mapping, index: number, slot: number): HostPage {
  const page = new HostPage(m, index, slot, m.host.pool.view(slot));
  page.flags = PG_lru;
  page_born_locked(page);
  m.i_pages.set(index, page);
  m.host.lru.add(page);
  return page;
}

/**
 * A new locked, not-uptodate page at `index` of `m`, on the LRU, reclaiming for it if the pool is
 * full. `expect` is what the caller saw at the index: nothing, or a device entry it holds locked
 * (the new page replaces it; the caller then fills the page from the device or the disk). null
 * when the index changed while the slot was found (another task brought the page in): look again.
 */
export async function page_cache_alloc(
  m: Mapping,
  index: number,
  expect: DeviceEntry | undefined,
): Promise<HostPage | null> {
  const slot = await alloc_slot(m.host);
  if (m.i_pages.get(index) !== expect) {
    m.host.pool.release(slot);
    return null;
  }
  return add_to_page_cache(m, index, slot);
}

/**
 * page_cache_alloc without direct reclaim (GFP_NOWAIT): null when no host page is free. For work
 * that must not write other pages back to make room (device eviction migrating a page home).
 */
export function page_cache_alloc_nowait(mapping: AddressSpace, index: number): Page | null {
  const m = asMapping(mapping);
  const slot = m.host.pool.alloc();
  return slot < 0 ? null : add_to_page_cache(m, index, slot);
}

/** __filemap_remove_folio + free: the page must be locked, unmapped and its data no longer needed. */
export function delete_from_page_cache(page: Page): void {
  const m = asMapping(page.mapping);
  if (page.mapcount !== 0) throw new Error(`delete_from_page_cache: page ${page.index} is still mapped`);
  if (m.i_pages.get(page.index) === page) m.i_pages.delete(page.index);
  m.host.lru.delete(page);
  m.host.pool.release(page.slot);
  page.flags &= ~(PG_lru | PG_dirty | PG_uptodate);
  unlock_page(page);
}

/**
 * __filemap_remove_folio with an entry left in the page's place: the page (locked, unmapped) is
 * freed and `entry` stands at its index. Reclaim leaving a device entry, a page migrated to the
 * device, and a page allocated for the device's data that was never filled all do this.
 */
export function replace_page_cache_entry(page: Page, entry: DeviceEntry): void {
  const m = asMapping(page.mapping);
  delete_from_page_cache(page);
  m.i_pages.set(page.index, entry);
}

/** readpage: real pread of the page from the backing file. */
export async function readpage(m: Mapping, page: Page): Promise<void> {
  const tr = trace_begin(m, [page.index]);
  if (m.shadows.delete(page.index)) m.host.vmstat.count('workingset_refault_file');
  await m.a_ops.readpage(page.index, page.data);
  m.host.vmstat.count('pgpgin', m.pageSize / 1024);
  page.flags |= PG_uptodate;
  tr?.end('readpage', ['readpage']);
}

/**
 * New pages (locked, not uptodate) of consecutive indices read from the disk in one go where the
 * filesystem can (a_ops.readpages: one preadv), else a readpage each.
 */
export async function readpages(m: Mapping, pages: Page[]): Promise<void> {
  if (pages.length === 1 || !m.a_ops.readpages) {
    for (const p of pages) await readpage(m, p);
    return;
  }
  for (const p of pages) if (m.shadows.delete(p.index)) m.host.vmstat.count('workingset_refault_file');
  await m.a_ops.readpages(
    pages[0].index,
    pages.map((p) => p.data),
  );
  m.host.vmstat.count('pgpgin', (pages.length * m.pageSize) / 1024);
  for (const p of pages) p.flags |= PG_uptodate;
}

/** A new page that was never filled leaves the cache (its slot freed, unlocked). */
function drop_unread(m: Mapping, page: Page): void {
  if (m.i_pages.get(page.index) === page) m.i_pages.delete(page.index);
  m.host.lru.delete(page);
  m.host.pool.release(page.slot);
  unlock_page(page);
}

/**
 * read_cache_page_locked for several indices, in order: the absent ones of each run of consecutive
 * indices read in one readpages (a device entry, which reclaim may leave while the run is read, is
 * read_cache_page's: filled from the device). On a failure every page it locked is unlocked and
 * every page it allocated and could not fill is gone again: the pages are as found.
 */
export async function read_cache_pages_locked(mapping: AddressSpace, indices: number[]): Promise<Page[]> {
  const m = asMapping(mapping);
  const out: Page[] = [];
  let run: Page[] = [];
  const flush = async () => {
    const r = run;
    run = [];
    if (r.length === 0) return;
    try {
      await readpages(m, r);
    } catch (err) {
      for (const p of r) {
        drop_unread(m, p);
        out.splice(out.indexOf(p), 1);
      }
      throw err;
    }
  };
  try {
    for (const index of indices) {
      const e = m.i_pages.get(index);
      if (!e) {
        if (run.length && run[run.length - 1].index !== index - 1) await flush();
        const p = await page_cache_alloc(m, index, undefined);
        if (p) {
          run.push(p);
          out.push(p);
          continue;
        }
        // Another task put a page (or entry) there while this one waited for a slot: take theirs.
      }
      await flush();
      out.push(await read_cache_page_locked(m, index));
    }
    await flush();
    return out;
  } catch (err) {
    for (const p of run) drop_unread(m, p);
    for (const p of out) if (!run.includes(p)) unlock_page(p);
    throw err;
  }
}

/**
 * Get or create the page at `index`, locked, with its data: read from the disk when absent, pulled
 * from the device (policy.readpageFromDevice) when a device entry stands there. A page in state S
 * (dirty, not uptodate: the device holds newer data) is returned as it is: the caller asks the
 * policy (cpuNeedsData) when the CPU needs the data. Exported for the device policies' fault service,
 * which calls it without the fs lock. `major` says whether it had to read the page in.
 */
export async function read_cache_page(
  mapping: AddressSpace,
  index: number,
): Promise<{ page: Page; major: boolean }> {
  const m = asMapping(mapping);
  for (;;) {
    // Locked and still standing (what was reclaimed or truncated while we waited is looked at again).
    const e = await lock_index(m, index);
    if (e && e.kind === 'page') {
      if (!PageUptodate(e) && !PageDirty(e)) {
        await readpage_or_drop(m, e, null);
        return { page: e, major: true };
      }
      return { page: e, major: false };
    }
    if (e) {
      // A device entry: held while its page replaces it and is filled from the device.
      try {
        const page = await page_cache_alloc(m, index, e);
        if (!page) continue;
        await readpage_or_drop(m, page, e);
        return { page, major: true };
      } finally {
        unlock_entry(e);
      }
    }
    const page = await page_cache_alloc(m, index, undefined);
    if (!page) continue; // another task brought it in meanwhile
    await readpage_or_drop(m, page, null);
    return { page, major: true };
  }
}

/** Fill a new page from the device entry it replaced, else from the disk; on failure drop it. */
async function readpage_or_drop(m: Mapping, page: Page, entry: DeviceEntry | null): Promise<void> {
  // The device entry goes back in the page's place on a failure, unless the policy said it no
  // longer holds the data (the entry would then name nothing: the page reads the disk next time).
  let held = entry !== null;
  try {
    if (entry && (await m.policy.readpageFromDevice(m, entry, page))) return;
    held = false;
    await readpage(m, page);
  } catch (err) {
    if (held && m.i_pages.get(page.index) === page && !PageUptodate(page)) m.i_pages.set(page.index, entry!);
    else if (m.i_pages.get(page.index) === page) m.i_pages.delete(page.index);
    m.host.lru.delete(page);
    m.host.pool.release(page.slot);
    unlock_page(page);
    throw err;
  }
}

/** read_cache_page, locked page only: the exported "get me this index, locked" for the policies. */
export async function read_cache_page_locked(mapping: AddressSpace, index: number): Promise<Page> {
  return (await read_cache_page(mapping, index)).page;
}

export function folio_mark_dirty(page: Page): void {
  if (!PageDirty(page)) {
    page.flags |= PG_dirty;
    asMapping(page.mapping).host.vmstat.count('nr_dirtied');
  }
}
export function folio_clear_dirty(page: Page): void {
  page.flags &= ~PG_dirty;
}
export function folio_mark_uptodate(page: Page): void {
  page.flags |= PG_uptodate;
}
export function folio_clear_uptodate(page: Page): void {
  page.flags &= ~PG_uptodate;
}
/** The CPU touched the page: reclaim gives it a second chance. */
export function mark_page_accessed(page: Page): void {
  page.flags |= PG_referenced;
}

/**
 * filemap_read: read(2) through the cache, short at EOF, into `into` where given. Misses start synchronous readahead; every
 * batch of pages is handed to the policy (cpuNeedsData) before its bytes are copied out. A device
 * entry is read through the policy's bounce page where it has one (Glisse's scheme: the page stays
 * on the device), else brought back like any other page.
 */
export async function filemap_read(
  mapping: AddressSpace,
  off: number,
  len: number,
  into?: Uint8Array,
): Promise<Uint8Array> {
  const m = asMapping(mapping);
  const ps = m.pageSize;
  const end = Math.min(off + len, m.size);
  if (end <= off) return new Uint8Array(0);
  // The caller's buffer, as read(2) fills it (no new memory to touch), or a new one.
  const out = into ? into.subarray(0, end - off) : new Uint8Array(end - off);
  const first = Math.floor(off / ps);
  const last = Math.floor((end - 1) / ps);
  const batch = batchPages(m.host);
  for (let idx = first; idx <= last; idx += batch) {
    const n = Math.min(batch, last - idx + 1);
    const bounced = await bounce_read(m, idx, n);
    const pages: Page[] = [];
    try {
      for (let i = idx; i < idx + n; i++) {
        if (bounced.has(i)) continue;
        // A miss, or a device entry (its data is pulled from the device in a readahead batch).
        if (m.i_pages.get(i)?.kind !== 'page') await page_cache_sync_readahead(m, i, last - i + 1);
        pages.push(await read_cache_page_locked(m, i));
      }
      await m.policy.cpuNeedsData(m, pages, 'read');
      for (const p of pages) {
        copy_from_page(p.index, p.data, ps, off, end, out);
        mark_page_accessed(p);
      }
      for (const [i, data] of bounced) copy_from_page(i, data, ps, off, end, out);
    } finally {
      for (const p of pages) unlock_page(p);
    }
    m.ra.prev_index = idx + n - 1;
  }
  return out;
}

/**
 * The device entries of [idx, idx + n), each locked in index order and rechecked (an entry another
 * task replaced meanwhile is left out), for a bounce; the caller unlocks them.
 */
async function lock_entries(m: Mapping, idx: number, n: number): Promise<DeviceEntry[]> {
  const entries: DeviceEntry[] = [];
  for (let i = idx; i < idx + n; i++) {
    const e = m.i_pages.get(i);
    if (e?.kind !== 'device') continue;
    await lock_entry(m, e);
    if (m.i_pages.get(i) === e) entries.push(e);
    else unlock_entry(e);
  }
  return entries;
}

/** The device entries of pages [idx, idx + n) read through the policy's bounce page, if it has one. */
async function bounce_read(m: Mapping, idx: number, n: number): Promise<Map<number, Uint8Array>> {
  const out = new Map<number, Uint8Array>();
  if (!m.policy.bounceRead) return out;
  const entries = await lock_entries(m, idx, n);
  if (entries.length === 0) return out;
  try {
    const got = await m.policy.bounceRead(m, entries);
    entries.forEach((e, k) => {
      const data = got[k];
      if (data) out.set(e.index, data);
    });
  } finally {
    for (const e of entries) unlock_entry(e);
  }
  return out;
}

/**
 * Copy the part of page `index` (its bytes: `data`) that lies in [off, end) of the file into out
 * (out[0] is file offset off).
 */
export function copy_from_page(
  index: number,
  data: Uint8Array,
  ps: number,
  off: number,
  end: number,
  out: Uint8Array,
): void {
  const pageStart = index * ps;
  const from = Math.max(off, pageStart);
  const to = Math.min(end, pageStart + ps);
  out.set(data.subarray(from - pageStart, to - pageStart), from - off);
}

/** The part of `bytes` (written at file offset off) that lands in page `index`, and where in it. */
function page_part(
  index: number,
  ps: number,
  off: number,
  bytes: Uint8Array,
): { at: number; part: Uint8Array } {
  const pageStart = index * ps;
  const from = Math.max(off, pageStart);
  const to = Math.min(off + bytes.length, pageStart + ps);
  return { at: from - pageStart, part: bytes.subarray(from - off, to - off) };
}

/** The device entries of pages [idx, idx + n) written through the policy's bounce page, if it has one. */
export async function bounce_write(
  m: Mapping,
  idx: number,
  n: number,
  off: number,
  bytes: Uint8Array,
): Promise<Set<number>> {
  const done = new Set<number>();
  if (!m.policy.bounceWrite) return done;
  const entries = await lock_entries(m, idx, n);
  if (entries.length === 0) return done;
  try {
    const writes: BounceWrite[] = entries.map((e) => {
      const { at, part } = page_part(e.index, m.pageSize, off, bytes);
      return { entry: e, offset: at, bytes: part };
    });
    const ok = await m.policy.bounceWrite(m, writes);
    writes.forEach((w, k) => {
      if (ok[k]) done.add(w.entry.index);
    });
  } finally {
    for (const e of entries) unlock_entry(e);
  }
  return done;
}

/** [first, first + n). */
const range = (first: number, n: number): number[] => Array.from({ length: n }, (_, k) => first + k);

/**
 * generic_perform_write: write(2) through the cache. Blocks for the whole range are reserved first
 * (ENOSPC before anything changes); a page the write covers whole is not read in; a partial page
 * is (and the policy brings back device-held data); the policy revokes device access before the
 * bytes land. A device entry is written through the policy's bounce page where it has one. The
 * file grows as the write goes.
 */
export async function generic_perform_write(
  mapping: AddressSpace,
  off: number,
  bytes: Uint8Array,
): Promise<void> {
  const m = asMapping(mapping);
  const ps = m.pageSize;
  const end = off + bytes.length;
  if (bytes.length === 0) return;
  const first = Math.floor(off / ps);
  const last = Math.floor((end - 1) / ps);
  await m.a_ops.reserve_blocks(first, last);
  const oldSize = m.size;
  const batch = batchPages(m.host);
  for (let idx = first; idx <= last; idx += batch) {
    const n = Math.min(batch, last - idx + 1);
    const bounced = await bounce_write(m, idx, n, off, bytes);
    const pages: Page[] = [];
    const partial: Page[] = [];
    const fresh = new Set<number>();
    const dropped = new Set<Page>();
    // The write as one event per page, from the state before any of it (readpage and the policy's
    // rows are traced on their own on the way).
    const tr = trace_begin(
      m,
      range(idx, n).filter((i) => !bounced.has(i)),
    );
    try {
      for (let i = idx; i < idx + n; i++) {
        if (bounced.has(i)) continue;
        const pageStart = i * ps;
        const whole = off <= pageStart && end >= pageStart + ps;
        const p =
          !m.i_pages.has(i) && (whole || pageStart >= m.size)
            ? await page_cache_alloc(m, i, undefined)
            : null;
        if (p) {
          // grab_cache_page_write_begin: nothing to read, the page starts as zeros. It is
          // uptodate only once the write's bytes are in it (write_end): until then it is not
          // the file's data, and a write that fails before drops it.
          pages.push(p);
          fresh.add(i);
        } else {
          const p = await read_cache_page_locked(m, i);
          pages.push(p);
          if (!whole) partial.push(p);
        }
      }
      if (partial.length > 0) await m.policy.cpuNeedsData(m, partial, 'write-partial');
      await m.policy.cpuWillWrite(m, pages, 'write');
      for (const p of pages) {
        const { at, part } = page_part(p.index, ps, off, bytes);
        p.data.set(part, at);
        p.flags |= PG_uptodate;
        folio_mark_dirty(p);
        mark_page_accessed(p);
      }
      tr?.end('cpu-write', (i) => (fresh.has(i) ? ['alloc-page', 'write'] : ['write']));
    } catch (err) {
      // The pages allocated for the write and never filled leave the cache as they came.
      for (const p of pages) {
        if (!fresh.has(p.index) || PageUptodate(p) || m.i_pages.get(p.index) !== p) continue;
        delete_from_page_cache(p); // unlocks it
        dropped.add(p);
      }
      throw err;
    } finally {
      for (const p of pages) if (!dropped.has(p)) unlock_page(p);
    }
    m.size = Math.max(m.size, Math.min(end, (idx + n) * ps));
  }
  if (m.size !== oldSize) await m.a_ops.set_size(m.size);
}

/** page_mkwrite for page `index` of `mapping`: the filesystem allocates its block (may ENOSPC). */
export async function page_mkwrite(mapping: AddressSpace, index: number): Promise<void> {
  const m = asMapping(mapping);
  m.host.vmstat.count('pgmkwrite');
  await m.a_ops.page_mkwrite(index);
}
