/**
 * Shared CPU mappings of a file (mm/memory.c, filemap_fault, filemap_map_pages): a VmArea has one
 * PTE word per page in a SharedArrayBuffer. A load through a PTE that is not present takes a read
 * fault (the page read in if absent: a major fault) and maps its uptodate neighbours read-only too
 * (fault-around). A store through a PTE that is not writable takes a write-protect fault: the
 * filesystem's page_mkwrite allocates the block (it may refuse: ENOSPC, a SIGBUS), the policy revokes
 * the device's access, and the page is mapped writable and marked dirty.
 *
 * Locks: a fault holds the mount and mmap_lock shared (the VmArea cannot go away), the mapping's
 * invalidate_lock shared (no truncate takes the page meanwhile) and the page lock; under the page
 * lock it looks at the PTE again: another thread's fault may have done its work already (a
 * spurious fault), and a read fault never downgrades a writable PTE. The owner thread's own loads
 * and stores (VmArea.load, VmArea.store) check the PTE and copy in one synchronous step, faulting
 * until the PTE grants the access, as a CPU thread's access does (src/cpu/access.ts).
 */

import { HmmlabError } from '../errors.ts';
import { planted } from '../inject/planted.ts';
import type { RwSemaphore } from '../lock/rwsem.ts';
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
import { i_mmap_locked, type TlbGather, tlb_finish_mmu, tlb_gather_mmu } from './rmap.ts';
import { trace_begin } from './trace.ts';
import type { Page } from './types.ts';

/** fault_around_bytes, as Linux defaults it. */
export const FAULT_AROUND_BYTES = 64 * 1024;

/** Runs a public operation under the mount's lock (the fs passes its mutex in). */
export type Serialize = <T>(fn: () => Promise<T>) => Promise<T>;

/** What a VmArea needs of the filesystem that made it: its operations and the mm's mmap_lock. */
export interface VmAreaOwner {
  /** Run fn as one public operation of the mount (the mount held shared). */
  op: Serialize;
  /** The mm's mmap_lock: faults shared, mmap and munmap exclusive. */
  mmap_lock: RwSemaphore;
}

/** Faults in a row on one page of an owner-thread access before it gives up (as src/cpu/access.ts). */
const MAX_OWNER_FAULTS = 10_000;

export class VmArea {
  /** One PTE word per page of the mapping (see pte.ts), shared with CPU worker threads. */
  readonly pte: Int32Array;
  closed = false;
  /** Pages of the range that munmap took out (a partial munmap leaves a hole): SIGSEGV there. */
  readonly holes = new Set<number>();

  constructor(
    readonly mapping: Mapping,
    readonly nrPages: number,
    readonly owner: VmAreaOwner,
  ) {
    this.pte = new Int32Array(new SharedArrayBuffer(nrPages * 4));
    i_mmap_locked(mapping, true, () => mapping.i_mmap.add(this));
  }

  /** Bytes this mapping covers. */
  get length(): number {
    return this.nrPages * this.mapping.pageSize;
  }

  /** Loads [off, off + len), clamped to EOF; read faults (and fault-around) where PTEs are missing. */
  load(off: number, len: number): Promise<Uint8Array> {
    return this.owner.op(() =>
      this.owner.mmap_lock.read(async () => {
        this.check('load', off, len);
        return vma_load(this, off, len);
      }),
    );
  }

  /** Stores bytes at off (within EOF); write-protect faults + page_mkwrite where PTEs are not writable. */
  store(off: number, bytes: Uint8Array): Promise<void> {
    return this.owner.op(() =>
      this.owner.mmap_lock.read(async () => {
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
      }),
    );
  }

  /** munmap: every PTE removed (and shot down), the mapping detached. */
  unmap(): Promise<void> {
    return this.owner.op(() =>
      this.owner.mmap_lock.write(async () => {
        const tlb = tlb_gather_mmu();
        zap_vma(this, tlb);
        await tlb_finish_mmu(this.mapping.host, tlb);
      }),
    );
  }

  /** munmap of part of the mapping: the pages of [off, off + len) lose their PTEs and become a hole. */
  munmap(off: number, len: number): Promise<void> {
    return this.owner.op(() =>
      this.owner.mmap_lock.write(async () => {
        this.check('munmap', off, len);
        const ps = this.mapping.pageSize;
        if (off % ps !== 0 || len % ps !== 0) {
          throw new HmmlabError('EINVAL', `munmap at offset ${off} length ${len}: not page aligned (${ps})`);
        }
        const tlb = tlb_gather_mmu();
        zap_vma_range(this, off / ps, (off + len) / ps - 1, tlb);
        for (let i = off / ps; i < (off + len) / ps; i++) this.holes.add(i);
        await tlb_finish_mmu(this.mapping.host, tlb);
      }),
    );
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
export function zap_vma(vma: VmArea, tlb?: TlbGather): void {
  zap_vma_range(vma, 0, vma.nrPages - 1, tlb);
  i_mmap_locked(vma.mapping, true, () => vma.mapping.i_mmap.delete(vma));
  vma.closed = true;
}

/**
 * zap_page_range: remove the PTEs of pages [first, last] of the VmArea. A PTE maps only a cached
 * page, so where the file has fewer cached pages than the range, walk those instead of every PTE
 * word (a mapping of a large file's size limit has millions).
 */
function zap_vma_range(vma: VmArea, first: number, last: number, tlb?: TlbGather): void {
  const m = vma.mapping;
  const indices = m.i_pages.size < last - first + 1 ? [...m.i_pages.keys()] : null;
  const n = indices ? indices.length : last - first + 1;
  for (let k = 0; k < n; k++) {
    const i = indices ? indices[k] : first + k;
    if (i < first || i > last || i >= vma.nrPages) continue;
    const pte = Atomics.load(vma.pte, i);
    if (pte_none(pte)) continue;
    Atomics.store(vma.pte, i, 0);
    tlb?.changes.push({ ptes: vma.pte, index: i });
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

/**
 * An owner-thread access to page `index`: fault until the PTE grants it, then `copy` the page in
 * the same synchronous step as the check (no other task runs in between: the owner thread's TLB).
 */
async function vma_access(
  vma: VmArea,
  index: number,
  write: boolean,
  copy: (page: Page) => void,
): Promise<void> {
  for (let tries = 0; ; tries++) {
    const pte = Atomics.load(vma.pte, index);
    if (!pte_none(pte) && (!write || pte_write(pte))) {
      const page = pte_page(vma, index);
      copy(page);
      mark_page_accessed(page); // the emulated accessed bit
      return;
    }
    if (tries >= MAX_OWNER_FAULTS) {
      throw new HmmlabError(
        'EFAULT',
        `${MAX_OWNER_FAULTS} faults in a row on page ${index} of ${vma.mapping.name} and its PTE still does not grant the access`,
      );
    }
    const m = vma.mapping;
    if (index * m.pageSize >= m.size) {
      throw new HmmlabError('EFAULT', `access to page ${index} of ${m.name} past EOF ${m.size} (SIGBUS)`);
    }
    await m.invalidate_lock.read(() => filemap_fault(vma, index, write));
  }
}

async function vma_load(vma: VmArea, off: number, len: number): Promise<Uint8Array> {
  const m = vma.mapping;
  const ps = m.pageSize;
  const end = Math.min(off + len, m.size);
  if (end <= off) return new Uint8Array(0);
  const out = new Uint8Array(end - off);
  for (let i = Math.floor(off / ps); i <= Math.floor((end - 1) / ps); i++) {
    await vma_access(vma, i, false, (page) => copy_from_page(page.index, page.data, ps, off, end, out));
  }
  return out;
}

async function vma_store(vma: VmArea, off: number, bytes: Uint8Array): Promise<void> {
  const m = vma.mapping;
  const ps = m.pageSize;
  const end = off + bytes.length;
  if (bytes.length === 0) return;
  for (let i = Math.floor(off / ps); i <= Math.floor((end - 1) / ps); i++) {
    const pageStart = i * ps;
    const from = Math.max(off, pageStart);
    const to = Math.min(end, pageStart + ps);
    await vma_access(vma, i, true, (page) =>
      page.data.set(bytes.subarray(from - off, to - off), from - pageStart),
    );
  }
}

/** What a fault did: mapped the page, or found the PTE already granting the access (spurious). */
export type FaultResult = 'mapped' | 'spurious';

/**
 * filemap_fault (+ do_page_mkwrite for a write fault, + do_fault_around for a read fault): make
 * page `index` present in `vma` with the access asked for. The caller holds the mount and
 * mmap_lock shared, and the mapping's invalidate_lock shared.
 */
export async function filemap_fault(vma: VmArea, index: number, write: boolean): Promise<FaultResult> {
  const m = vma.mapping;
  const vmstat = m.host.vmstat;
  vmstat.count('pgfault');
  // Major: the page was not in the cache (absent, or a device entry to pull back).
  const cached = m.i_pages.get(index)?.kind === 'page';
  if (!m.i_pages.has(index)) await page_cache_sync_readahead(m, index, 1); // do_sync_mmap_readahead
  const { page, major } = await read_cache_page(m, index);
  if (major || !cached) vmstat.count('pgmajfault');
  try {
    // Under the page lock: another thread's fault may have mapped it as this one needs meanwhile.
    const pte = Atomics.load(vma.pte, index);
    if (!pte_none(pte) && pte_slot(pte) === page.slot && (!write || pte_write(pte))) return 'spurious';
    await m.policy.cpuNeedsData(m, [page], 'fault');
    // page_mkwrite: the filesystem is told the page will be written (its block), and the page is
    // dirtied once the device's access is gone. The planted bug skips both: the store is lost.
    const mkwrite = write && !planted('no-mkwrite');
    if (write) {
      if (mkwrite) await do_page_mkwrite(m, page);
      await m.policy.cpuWillWrite(m, [page], 'fault');
    }
    // The policy traced its own rows above; the CPU side of the fault (the PTE) is the page cache's.
    const tr = trace_begin(m, [index]);
    if (mkwrite) folio_mark_dirty(page);
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
  return 'mapped';
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
