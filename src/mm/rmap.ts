/**
 * mm/rmap.c for file pages: from a page to every CPU PTE that maps it, by walking the VmAreas of
 * its mapping (i_mmap), as rmap_walk_file does. PTE words change with Atomics so that CPU worker
 * threads see them whole.
 */
import { asMapping, type Mapping } from './mapping.ts';
import { pte_none, pte_slot, pte_write, pte_wrprotect } from './pte.ts';
import type { AddressSpace, Page } from './types.ts';

/** rmap_walk_file: call `visit` with the PTE array of every VmArea that maps `page` and the PTE word there. */
function rmap_walk(page: Page, visit: (ptes: Int32Array, pte: number) => void): void {
  for (const vma of asMapping(page.mapping).i_mmap) {
    if (page.index >= vma.pte.length) continue;
    const pte = Atomics.load(vma.pte, page.index);
    if (pte_none(pte) || pte_slot(pte) !== page.slot) continue;
    visit(vma.pte, pte);
  }
}

/** page_mkclean: write-protect every CPU PTE of `page`; the next store faults (and re-dirties it). */
export function page_mkclean(page: Page): number {
  let n = 0;
  rmap_walk(page, (ptes, pte) => {
    if (!pte_write(pte)) return;
    Atomics.store(ptes, page.index, pte_wrprotect(pte));
    n++;
  });
  asMapping(page.mapping).host.vmstat.count('pgmkclean', n);
  return n;
}

/** try_to_unmap: remove every CPU PTE of `page`; mapcount drops to 0. */
export function try_to_unmap(page: Page): number {
  let n = 0;
  rmap_walk(page, (ptes) => {
    Atomics.store(ptes, page.index, 0);
    page.mapcount--;
    n++;
  });
  asMapping(page.mapping).host.vmstat.count('pgunmap', n);
  return n;
}

/** unmap_mapping_range: remove every CPU PTE of pages [first, last] of the file. */
export function unmap_mapping_range(mapping: AddressSpace, first: number, last: number): number {
  const m: Mapping = asMapping(mapping);
  let n = 0;
  for (const [index, e] of m.i_pages) {
    if (index >= first && index <= last && e.kind === 'page' && e.mapcount > 0) n += try_to_unmap(e);
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
