/**
 * mm/rmap.c for file pages: from a page to every CPU PTE that maps it, by walking the VmAreas of
 * its mapping (i_mmap), as rmap_walk_file does. PTE words change with Atomics so that CPU worker
 * threads see them whole.
 */
import { asMapping, type Mapping } from './mapping.ts';
import { pte_none, pte_slot, pte_write, pte_wrprotect } from './pte.ts';
import type { AddressSpace, Page } from './types.ts';

/** page_mkclean: write-protect every CPU PTE of `page`; the next store faults (and re-dirties it). */
export function page_mkclean(page: Page): number {
  const m = asMapping(page.mapping);
  let n = 0;
  for (const vma of m.i_mmap) {
    if (page.index >= vma.pte.length) continue;
    const pte = Atomics.load(vma.pte, page.index);
    if (!pte_none(pte) && pte_slot(pte) === page.slot && pte_write(pte)) {
      Atomics.store(vma.pte, page.index, pte_wrprotect(pte));
      n++;
    }
  }
  m.host.vmstat.count('pgmkclean', n);
  return n;
}

/** try_to_unmap: remove every CPU PTE of `page`; mapcount drops to 0. */
export function try_to_unmap(page: Page): number {
  const m = asMapping(page.mapping);
  let n = 0;
  for (const vma of m.i_mmap) {
    if (page.index >= vma.pte.length) continue;
    const pte = Atomics.load(vma.pte, page.index);
    if (!pte_none(pte) && pte_slot(pte) === page.slot) {
      Atomics.store(vma.pte, page.index, 0);
      page.mapcount--;
      n++;
    }
  }
  m.host.vmstat.count('pgunmap', n);
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
  const m = asMapping(page.mapping);
  let acc: '-' | 'ro' | 'rw' = '-';
  for (const vma of m.i_mmap) {
    if (page.index >= vma.pte.length) continue;
    const pte = Atomics.load(vma.pte, page.index);
    if (pte_none(pte) || pte_slot(pte) !== page.slot) continue;
    if (pte_write(pte)) return 'rw';
    acc = 'ro';
  }
  return acc;
}
