/**
 * The page cache's public surface: the objects (types.ts), the functions a coherence policy calls
 * from inside a device fault (they take page locks only: the fault runs inside the kernel's
 * operation), counters and snapshots. HmmFs (src/fs/hmmfs.ts)
 * is the way in for everything else.
 */

export { checkBytes, checkDirectAlign, checkFileLimit, checkOffset } from './args.ts';
export { dio_read, dio_write } from './direct.ts';
export {
  batchPages,
  delete_from_page_cache,
  filemap_read,
  folio_clear_dirty,
  folio_clear_uptodate,
  folio_mark_dirty,
  folio_mark_uptodate,
  generic_perform_write,
  mark_page_accessed,
  page_cache_alloc_nowait,
  page_mkwrite,
  read_cache_page,
  read_cache_page_locked,
  read_cache_pages_locked,
  readpages,
  replace_page_cache_entry,
} from './filemap.ts';
export { asMapping, type FileRaState, Mapping } from './mapping.ts';
export {
  FAULT_AROUND_BYTES,
  filemap_fault,
  filemap_map_pages,
  VmArea,
  vma_pte_access,
  zap_vma,
} from './memory.ts';
export {
  flagLetters,
  lock_entry,
  lock_page,
  PageDirty,
  PageLocked,
  PageLRU,
  PageReferenced,
  PageUptodate,
  PageWriteback,
  page_mapped,
  trylock_entry,
  trylock_page,
  unlock_entry,
  unlock_page,
} from './page.ts';
export { PageCache } from './pagecache.ts';
export { PagePool } from './pool.ts';
export { mk_pte, PTE_R, PTE_W, pte_none, pte_slot, pte_write } from './pte.ts';
export {
  get_init_ra_size,
  get_next_ra_size,
  page_cache_sync_readahead,
  READ_AHEAD_KB,
  ra_max,
} from './readahead.ts';
export {
  type CpuPteChange,
  type CpuTlbShootdown,
  page_cpu_access,
  page_mkclean,
  type TlbGather,
  tlb_finish_mmu,
  tlb_gather_mmu,
  try_to_unmap,
  unmap_mapping_range,
} from './rmap.ts';
export { formatSnapshot, host_state, page_snapshot } from './snapshot.ts';
export { punch_hole, truncate_inode_pages_range, truncate_setsize, zero_page_range } from './truncate.ts';
export * from './types.ts';
export { shrink_page, try_to_free_pages } from './vmscan.ts';
export { formatVmstat, VM_EVENTS, type VmEvent, VmStat } from './vmstat.ts';
export { filemap_write_and_wait_range, writepage_bounce, writepage_locked } from './writeback.ts';
