/**
 * Shared CPU mappings of a file (mm/memory.c, filemap_fault, filemap_map_pages): a VmArea has one
 * PTE word per page in a SharedArrayBuffer. A load through a PTE that is not present takes a read
 * fault (the page read in if absent: a major fault) and maps its uptodate neighbours read-only too
 * (fault-around). A store through a PTE that is not writable takes a write-protect fault: the
 * filesystem's page_mkwrite allocates the block (it may refuse: ENOSPC, a SIGBUS), the policy revokes
 * the device's access, and the page is mapped writable and marked dirty.
 */

import { HmmlabError } from '../errors.ts';
import { checkBytes, checkOffset } from './args.ts';
import {
  copy_from_page,
  folio_mark_dirty,
  mark_page_accessed,
  page_mkwrite,
  read_cache_page,
} from './filemap.ts';
import type { Mapping } from './mapping.ts';
import { PageLocked, PageUptodate, unlock_page } from './page.ts';
import { mk_pte, pte_none, pte_slot, pte_write } from './pte.ts';
import { page_cache_sync_readahead } from './readahead.ts';
import { trace_begin } from './trace.ts';
import type { Page } from './types.ts';

/** fault_around_bytes, as Linux defaults it. */
export const FAULT_AROUND_BYTES = 64 * 1024;

/** Runs a public operation under the mount's lock (the fs passes its mutex in). */
export type Serialize = <T>(fn: () => Promise<T>) => Promise<T>;

export class VmArea {
  /** One PTE word per page of the mapping (see pte.ts), shared with CPU worker threads. */
  readonly pte: Int32Array;
  closed = false;
  /** Pages of the range that munmap took out (a partial munmap leaves a hole): SIGSEGV there. */
  readonly holes = new Set<number>();

  constructor(
    readonly mapping: Mapping,
    readonly nrPages: number,
    private readonly serialize: Serialize,
  ) {
    this.pte = new Int32Array(new SharedArrayBuffer(nrPages * 4));
    mapping.i_mmap.add(this);
  }

  /** Bytes this mapping covers. */
  get length(): number {
    return this.nrPages * this.mapping.pageSize;
  }

  /** Loads [off, off + len), clamped to EOF; read faults (and fault-around) where PTEs are missing. */
  load(off: number, len: number): Promise<Uint8Array> {
    return this.serialize(async () => {
      this.check('load', off, len);
      return vma_load(this, off, len);
    });
  }

  /** Stores bytes at off (within EOF); write-protect faults + page_mkwrite where PTEs are not writable. */
  store(off: number, bytes: Uint8Array): Promise<void> {
    return this.serialize(async () => {
      checkBytes('bytes', bytes);
      this.check('store', off, bytes.length);
      const end = off + bytes.length;
      if (end > this.mapping.size) {
        throw new HmmlabError(
          'EFAULT',
          `store at offset ${off} length ${bytes.length} runs past EOF ${this.mapping.size} (SIGBUS)`,
        );
      }
      return vma_store(this, off, bytes);
    });
  }

  /** munmap: every PTE removed. */
  unmap(): Promise<void> {
    return this.serialize(async () => zap_vma(this));
  }

  /** munmap of part of the mapping: the pages of [off, off + len) lose their PTEs and become a hole. */
  munmap(off: number, len: number): Promise<void> {
    return this.serialize(async () => {
      this.check('munmap', off, len);
      const ps = this.mapping.pageSize;
      if (off % ps !== 0 || len % ps !== 0) {
        throw new HmmlabError('EINVAL', `munmap at offset ${off} length ${len}: not page aligned (${ps})`);
      }
      zap_vma_range(this, off / ps, (off + len) / ps - 1);
      for (let i = off / ps; i < (off + len) / ps; i++) this.holes.add(i);
    });
  }

  private check(what: string, off: number, len: number): void {
    if (this.closed)
      throw new HmmlabError('EBADF', `${what} on a mapping of ${this.mapping.name} that is unmapped`);
    checkOffset('offset', off);
    checkOffset('length', len);
    if (off + len > this.length) {
      throw new HmmlabError(
        'EFAULT',
        `${what} at offset ${off} length ${len} runs past the mapping's ${this.length} bytes (SIGSEGV)`,
      );
    }
    if (what === 'munmap' || this.holes.size === 0 || len === 0) return;
    const ps = this.mapping.pageSize;
    for (let i = Math.floor(off / ps); i <= Math.floor((off + len - 1) / ps); i++) {
      if (this.holes.has(i))
        throw new HmmlabError('EFAULT', `${what} at offset ${off}: page ${i} was unmapped (SIGSEGV)`);
    }
  }
}

/**
 * Remove every PTE of the VmArea and detach it from the file (munmap, unmount). A present PTE maps
 * a page of the cache (reclaim and truncate unmap a page before dropping it), so the walk is over
 * the cached pages when they are fewer than the mapping's: a mapping as large as a file-size
 * limit of terabytes costs what is cached, not a PTE load per page of the limit.
 */
export function zap_vma(vma: VmArea): void {
  zap_vma_range(vma, 0, vma.nrPages - 1);
  vma.mapping.i_mmap.delete(vma);
  vma.closed = true;
}

/**
 * zap_page_range: remove the PTEs of pages [first, last] of the VmArea. A PTE maps only a cached
 * page, so where the file has fewer cached pages than the range, walk those instead of every PTE
 * word (a mapping of a large file's size limit has millions).
 */
function zap_vma_range(vma: VmArea, first: number, last: number): void {
  const m = vma.mapping;
  const indices = m.i_pages.size < last - first + 1 ? [...m.i_pages.keys()] : null;
  const n = indices ? indices.length : last - first + 1;
  for (let k = 0; k < n; k++) {
    const i = indices ? indices[k] : first + k;
    if (i < first || i > last || i >= vma.nrPages) continue;
    const pte = Atomics.load(vma.pte, i);
    if (pte_none(pte)) continue;
    Atomics.store(vma.pte, i, 0);
    const e = m.i_pages.get(i);
    if (e && e.kind === 'page' && e.slot === pte_slot(pte)) e.mapcount--;
  }
}

function set_pte(vma: VmArea, page: Page, writable: boolean): void {
  const old = Atomics.load(vma.pte, page.index);
  if (pte_none(old)) page.mapcount++;
  Atomics.store(vma.pte, page.index, mk_pte(page.slot, writable));
}

/** The page a present PTE maps (the PTE's slot is that page's slot). */
function pte_page(vma: VmArea, index: number): Page {
  const e = vma.mapping.i_pages.get(index);
  if (e?.kind !== 'page' || e.slot !== pte_slot(Atomics.load(vma.pte, index))) {
    throw new Error(`PTE ${index} of ${vma.mapping.name} maps no page of the cache`);
  }
  return e;
}

async function vma_load(vma: VmArea, off: number, len: number): Promise<Uint8Array> {
  const m = vma.mapping;
  const ps = m.pageSize;
  const end = Math.min(off + len, m.size);
  if (end <= off) return new Uint8Array(0);
  const out = new Uint8Array(end - off);
  for (let i = Math.floor(off / ps); i <= Math.floor((end - 1) / ps); i++) {
    if (pte_none(Atomics.load(vma.pte, i))) await filemap_fault(vma, i, false);
    const page = pte_page(vma, i);
    copy_from_page(page.index, page.data, ps, off, end, out);
    mark_page_accessed(page); // the emulated accessed bit
  }
  return out;
}

async function vma_store(vma: VmArea, off: number, bytes: Uint8Array): Promise<void> {
  const m = vma.mapping;
  const ps = m.pageSize;
  const end = off + bytes.length;
  if (bytes.length === 0) return;
  for (let i = Math.floor(off / ps); i <= Math.floor((end - 1) / ps); i++) {
    if (!pte_write(Atomics.load(vma.pte, i))) await filemap_fault(vma, i, true);
    const page = pte_page(vma, i);
    const pageStart = i * ps;
    const from = Math.max(off, pageStart);
    const to = Math.min(end, pageStart + ps);
    page.data.set(bytes.subarray(from - off, to - off), from - pageStart);
    mark_page_accessed(page);
  }
}

/**
 * filemap_fault (+ do_page_mkwrite for a write fault, + do_fault_around for a read fault): make
 * page `index` present in `vma` with the access asked for.
 */
export async function filemap_fault(vma: VmArea, index: number, write: boolean): Promise<void> {
  const m = vma.mapping;
  const vmstat = m.host.vmstat;
  vmstat.count('pgfault');
  // Major: the page was not in the cache (absent, or a device entry to pull back).
  const cached = m.i_pages.get(index)?.kind === 'page';
  if (!m.i_pages.has(index)) await page_cache_sync_readahead(m, index, 1); // do_sync_mmap_readahead
  const { page, major } = await read_cache_page(m, index);
  if (major || !cached) vmstat.count('pgmajfault');
  try {
    await m.policy.cpuNeedsData(m, [page], 'fault');
    if (write) {
      await do_page_mkwrite(m, page);
      await m.policy.cpuWillWrite(m, [page], 'fault');
    }
    // The policy traced its own rows above; the CPU side of the fault (the PTE) is the page cache's.
    const tr = trace_begin(m, [index]);
    if (write) folio_mark_dirty(page);
    set_pte(vma, page, write);
    mark_page_accessed(page);
    tr?.end(write ? 'cpu-write-fault' : 'cpu-read-fault', write ? ['page_mkwrite'] : []);
  } catch (err) {
    if (err instanceof HmmlabError && err.code === 'ENOSPC') {
      throw new HmmlabError(
        'ENOSPC',
        `page_mkwrite refused page ${index} of ${m.name} (offset ${index * m.pageSize}): ${err.message} (SIGBUS)`,
        { cause: err, pages: [index] },
      );
    }
    throw err;
  } finally {
    unlock_page(page);
  }
  if (!write) filemap_map_pages(vma, index);
}

async function do_page_mkwrite(m: Mapping, page: Page): Promise<void> {
  await page_mkwrite(m, page.index);
}

/**
 * filemap_map_pages: map read-only the resident neighbours of `index` within the fault-around
 * window that are not yet mapped in `vma` and are uptodate already. As Linux's fault-around, it
 * never does I/O and never asks the policy for data: a page whose newest data is on the device
 * (not uptodate), a device entry or an absent page is left to fault on its own, so a 1-byte mmap
 * read does not pull the device's pages back. Locked pages are skipped too.
 */
export function filemap_map_pages(vma: VmArea, index: number): number {
  const m = vma.mapping;
  const nr = Math.max(1, Math.floor(FAULT_AROUND_BYTES / m.pageSize));
  if (nr <= 1) return 0;
  const start = Math.floor(index / nr) * nr;
  const end = Math.min(start + nr, vma.nrPages, Math.ceil(m.size / m.pageSize));
  let mapped = 0;
  for (let i = start; i < end; i++) {
    if (i === index || !pte_none(Atomics.load(vma.pte, i)) || vma.holes.has(i)) continue;
    const e = m.i_pages.get(i);
    if (e?.kind !== 'page' || PageLocked(e) || !PageUptodate(e)) continue;
    const tr = trace_begin(m, [i]);
    set_pte(vma, e, false);
    tr?.end('fault-around', []);
    mapped++;
  }
  m.host.vmstat.count('fault_around_pages', mapped);
  return mapped;
}

/** The PTE permission a VmArea has at `index` (for snapshots and tests). */
export function vma_pte_access(vma: VmArea, index: number): '-' | 'ro' | 'rw' {
  const pte = Atomics.load(vma.pte, index);
  return pte_none(pte) ? '-' : pte_write(pte) ? 'rw' : 'ro';
}
