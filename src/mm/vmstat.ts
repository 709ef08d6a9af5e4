/**
 * Event counters, named as /proc/vmstat names them where Linux has a name. pgpgin/pgpgout are in
 * KiB, as Linux counts them; every other pg* counter is in pages. Gauges (nr_*) are computed at read.
 */
export const VM_EVENTS = [
  'pgpgin', // KiB read from the backing files by readpage
  'pgpgout', // KiB written to the backing files by writepage
  'pgfault', // CPU mmap faults (read and write-protect)
  'pgmajfault', // faults that had to read the page in
  'pgmkwrite', // page_mkwrite calls (write faults on a read-only or absent PTE)
  'fault_around_pages', // neighbouring pages mapped read-only by filemap_map_pages
  'pgra', // pages read by readahead (the demanded page included)
  'ra_sync', // synchronous readahead windows issued
  'ra_random', // misses judged random: the window was reset
  'pgscan_direct', // pages scanned by direct reclaim
  'pgsteal_direct', // pages reclaimed by direct reclaim
  'pgactivate', // referenced pages given a second chance
  'pgrotated', // pages rotated on the LRU because locked or under writeback
  'pgunmap', // CPU PTEs removed by try_to_unmap / unmap_mapping_range
  'pgmkclean', // CPU PTEs write-protected by page_mkclean
  'nr_dirtied', // pages that became dirty
  'nr_written', // pages written back
  'pginvalidate', // pages dropped by truncate, punch, direct I/O, dropcaches, unmount
  'workingset_refault_file', // readpage of an index whose page reclaim had evicted (shadow entry)
  'workingset_device_entry', // pages replaced by a device entry in reclaim
  'dio_read', // O_DIRECT reads
  'dio_write', // O_DIRECT writes
  'dio_pages_written_back', // dirty pages written back before direct I/O
  'drop_pagecache', // dropcaches calls
] as const;

export type VmEvent = (typeof VM_EVENTS)[number];

export class VmStat {
  readonly ev: Record<VmEvent, number>;
  constructor() {
    this.ev = Object.fromEntries(VM_EVENTS.map((k) => [k, 0])) as Record<VmEvent, number>;
  }
  count(e: VmEvent, n = 1): void {
    this.ev[e] += n;
  }
}

/** vmstat lines as /proc/vmstat prints them: `name value`, one a line. */
export function formatVmstat(stats: Record<string, number>): string {
  return Object.entries(stats)
    .map(([k, v]) => `${k} ${v}`)
    .join('\n');
}
