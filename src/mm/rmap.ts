/**
 * mm/rmap.c for file pages: from a page to every CPU PTE that maps it, by walking the VmAreas of
 * its mapping (i_mmap), as rmap_walk_file does. PTE words change with Atomics so that CPU worker
 * threads see them whole.
 *
 * A walk that takes a permission away (page_mkclean, try_to_unmap) records each PTE it changed in
 * the caller's TLB gather (struct mmu_gather); the caller then waits for the CPU TLB shootdown
 * (tlb_finish_mmu) before it relies on the change: before it copies a page it write-protected,
 * gives the device a copy or write access, or frees or reuses the page's slot. Until then a CPU
 * thread may still be inside an access it began under the old PTE (src/cpu/tlb.ts).
 *
 * i_mmap_rwsem: the walks hold it shared, adding or removing a VmArea exclusive. No holder awaits,
 * so on the one event loop they never meet; it is taken (by trylock, reported to lockdep) so that
 * its place in the lock order is checked: below the page lock, above the device page-table lock.
 */
import { lockdep } from '../lock/lockdep.ts';
import { I_MMAP_LOCK } from '../lock/order.ts';
import { asMapping, type Mapping } from './mapping.ts';
import type { PageCache } from './pagecache.ts';
import { pte_none, pte_slot, pte_write, pte_wrprotect } from './pte.ts';
import type { AddressSpace, Page } from './types.ts';

/** A CPU PTE word that lost a permission: the VmArea's PTE array and the page index. */
export interface CpuPteChange {
  ptes: Int32Array;
  index: number;
}

/** struct mmu_gather: the CPU PTEs a path changed, shot down together by tlb_finish_mmu. */
export interface TlbGather {
  readonly changes: CpuPteChange[];
}

/** The CPU threads' TLB shootdown (src/cpu/tlb.ts CpuTlb), as the page cache calls it. */
export interface CpuTlbShootdown {
  cpu_tlb_shootdown(changed: Iterable<CpuPteChange>): Promise<void>;
}

/** tlb_gather_mmu: an empty gather. */
export function tlb_gather_mmu(): TlbGather {
  return { changes: [] };
}

/**
 * tlb_finish_mmu: wait until no CPU thread is still inside an access under one of the gathered
 * PTEs' old values (nothing to wait for without CPU threads); the gather is empty after.
 */
export async function tlb_finish_mmu(host: PageCache, tlb: TlbGather): Promise<void> {
  if (tlb.changes.length === 0) return;
  const changed = tlb.changes.splice(0);
  if (host.tlb) await host.tlb.cpu_tlb_shootdown(changed);
}

/**
 * i_mmap_lock_read / i_mmap_lock_write around a synchronous walk or change of i_mmap: no holder
 * awaits, so it is always had; lockdep records it (a trylock: held, no dependency), which catches a
 * walk that takes it twice or under a lock that must come after it.
 */
export function i_mmap_locked<T>(m: Mapping, write: boolean, fn: () => T): T {
  if (!lockdep.enabled) return fn();
  lockdep.acquire(I_MMAP_LOCK, m.i_mmap_rwsem, { read: !write, trylock: true, anyTask: true });
  try {
    return fn();
  } finally {
    lockdep.release(I_MMAP_LOCK, m.i_mmap_rwsem, true);
  }
}

/** rmap_walk_file: call `visit` with the PTE array of every VmArea that maps `page` and the PTE word there. */
function rmap_walk(page: Page, visit: (ptes: Int32Array, pte: number) => void): void {
  for (const vma of asMapping(page.mapping).i_mmap) {
    if (page.index >= vma.pte.length) continue;
    const pte = Atomics.load(vma.pte, page.index);
    if (pte_none(pte) || pte_slot(pte) !== page.slot) continue;
    visit(vma.pte, pte);
  }
}

/** The same walk, with i_mmap_rwsem held shared (the walks that change PTEs). */
function rmap_walk_locked(page: Page, visit: (ptes: Int32Array, pte: number) => void): void {
  i_mmap_locked(asMapping(page.mapping), false, () => rmap_walk(page, visit));
}

/**
 * page_mkclean: write-protect every CPU PTE of `page`; the next store faults (and re-dirties it).
 * The changed PTEs go into `tlb`: shoot them down before copying the page.
 */
export function page_mkclean(page: Page, tlb?: TlbGather): number {
  let n = 0;
  rmap_walk_locked(page, (ptes, pte) => {
    if (!pte_write(pte)) return;
    Atomics.store(ptes, page.index, pte_wrprotect(pte));
    tlb?.changes.push({ ptes, index: page.index });
    n++;
  });
  asMapping(page.mapping).host.vmstat.count('pgmkclean', n);
  return n;
}

/**
 * try_to_unmap: remove every CPU PTE of `page`; mapcount drops to 0. The changed PTEs go into
 * `tlb`: shoot them down before the page's data or slot is relied on.
 */
export function try_to_unmap(page: Page, tlb?: TlbGather): number {
  let n = 0;
  rmap_walk_locked(page, (ptes) => {
    Atomics.store(ptes, page.index, 0);
    tlb?.changes.push({ ptes, index: page.index });
    page.mapcount--;
    n++;
  });
  asMapping(page.mapping).host.vmstat.count('pgunmap', n);
  return n;
}

/** unmap_mapping_range: remove every CPU PTE of pages [first, last] of the file. */
export function unmap_mapping_range(
  mapping: AddressSpace,
  first: number,
  last: number,
  tlb?: TlbGather,
): number {
  const m: Mapping = asMapping(mapping);
  let n = 0;
  for (const [index, e] of m.i_pages) {
    if (index >= first && index <= last && e.kind === 'page' && e.mapcount > 0) n += try_to_unmap(e, tlb);
  }
  return n;
}

/** The widest CPU permission any VmArea has on `page`. */
export function page_cpu_access(page: Page): '-' | 'ro' | 'rw' {
  let acc: '-' | 'ro' | 'rw' = '-';
  rmap_walk(page, (_ptes, pte) => {
    if (pte_write(pte)) acc = 'rw';
    else if (acc === '-') acc = 'ro';
  });
  return acc;
}
