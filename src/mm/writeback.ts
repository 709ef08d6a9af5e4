/**
 * Writeback (mm/page-writeback.c, filemap_write_and_wait_range): dirty pages go to disk with a real
 * pwrite. Before a page is written its CPU PTEs are write-protected (folio_clear_dirty_for_io ->
 * page_mkclean) so a later store faults and dirties it again; a page the device holds newer data
 * for (not uptodate) is first brought back by the policy; a device entry is written through the
 * policy's bounce buffer.
 */

import { HmmlabError } from '../errors.ts';
import { batchPages } from './filemap.ts';
import { asMapping, type Mapping } from './mapping.ts';
import {
  end_page_writeback,
  lock_index,
  PageDirty,
  PageLocked,
  PageUptodate,
  unlock_entry,
  unlock_page,
} from './page.ts';
import { page_mkclean, tlb_finish_mmu, tlb_gather_mmu } from './rmap.ts';
import { trace_begin } from './trace.ts';
import type { AddressSpace, DeviceEntry, Page } from './types.ts';
import { PG_dirty, PG_writeback } from './types.ts';

/** Bytes of page `index` that lie below i_size (what writepage puts on disk). */
function bytes_below_eof(m: Mapping, index: number): number {
  return Math.max(0, Math.min(m.pageSize, m.size - index * m.pageSize));
}

/** writepage of a locked dirty page whose data is uptodate (the caller asked the policy first). */
export async function writepage_locked(page: Page): Promise<void> {
  const m = asMapping(page.mapping);
  if (!PageUptodate(page)) {
    throw new HmmlabError('EIO', `writepage: page ${page.index} of ${m.name} is dirty but not uptodate`);
  }
  const tr = trace_begin(m, [page.index]);
  // folio_clear_dirty_for_io: write-protect the CPU mappings, and wait until no CPU thread is
  // still storing through one, before the bytes are written: a later store faults and re-dirties.
  const tlb = tlb_gather_mmu();
  page_mkclean(page, tlb);
  await tlb_finish_mmu(m.host, tlb);
  page.flags = (page.flags & ~PG_dirty) | PG_writeback;
  try {
    const len = bytes_below_eof(m, page.index);
    if (len > 0) await m.a_ops.writepage(page.index, page.data, len);
  } catch (err) {
    page.flags |= PG_dirty; // keep the data: it is still only here
    throw err;
  } finally {
    end_page_writeback(page);
  }
  m.host.vmstat.count('nr_written');
  m.host.vmstat.count('pgpgout', m.pageSize / 1024);
  tr?.end('writeback', ['page_mkclean', 'writepage']);
}

/** Write `data` as page `index` (a bounce buffer: a device entry's data, a device policy's copy). */
export async function writepage_bounce(
  mapping: AddressSpace,
  index: number,
  data: Uint8Array,
): Promise<void> {
  const m = asMapping(mapping);
  const len = Math.min(bytes_below_eof(m, index), data.length);
  if (len > 0) await m.a_ops.writepage(index, data, len);
  m.host.vmstat.count('nr_written');
  m.host.vmstat.count('pgpgout', m.pageSize / 1024);
}

/** Device entries go to disk through the policy's bounce buffers, one batch at a time. */
function writeback_device_entries(m: Mapping, entries: DeviceEntry[]): Promise<number> {
  if (entries.length === 0) return Promise.resolve(0);
  return m.policy.writebackDeviceEntries(m, entries, (index, data) => writepage_bounce(m, index, data));
}

/**
 * filemap_write_and_wait_range: every dirty page and device entry of [first, last] is on disk when
 * it returns (not fsynced: the caller does that). Returns the pages written.
 */
export async function filemap_write_and_wait_range(
  mapping: AddressSpace,
  first: number,
  last: number,
  why: 'writeback' | 'direct-io' | 'unmount' = 'writeback',
): Promise<number> {
  const m = asMapping(mapping);
  const indices = [...m.i_pages.keys()].filter((i) => i >= first && i <= last).sort((a, b) => a - b);
  const batch = batchPages(m.host);
  let written = 0;
  for (let k = 0; k < indices.length; k += batch) {
    const pages: Page[] = [];
    const entries: DeviceEntry[] = [];
    try {
      // Pages and device entries of the batch, each locked in index order and rechecked. What
      // another task put at the index while we waited for the lock is looked at again: a CPU
      // fault that pulled a device entry's data into a page leaves it dirty there, and it was
      // dirty (on the device) when the writeback began, so this writeback owes it to the disk.
      for (const i of indices.slice(k, k + batch)) {
        // A locked page not uptodate yet is being filled (from the device, maybe: then it will
        // be dirty): wait for it. Any other clean page has nothing for the disk.
        const e = await lock_index(m, i, (p) => !PageDirty(p) && (PageUptodate(p) || !PageLocked(p)));
        if (e?.kind === 'device') entries.push(e);
        else if (e && PageDirty(e)) pages.push(e);
        else if (e) unlock_page(e);
      }
      written += await writeback_device_entries(m, entries);
      if (pages.length === 0) continue;
      await m.policy.cpuNeedsData(m, pages, why);
      for (const p of pages) {
        if (!PageDirty(p)) continue;
        await writepage_locked(p);
        written++;
      }
    } finally {
      for (const p of pages) unlock_page(p);
      for (const e of entries) unlock_entry(e);
    }
  }
  return written;
}
