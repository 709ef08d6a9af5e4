/**
 * The host memory of one mount (a pglist_data): the shared page pool, the LRU that reclaim scans,
 * the vmstat counters and the coherence policy every path calls. Mappings point here.
 *
 * Lock order: docs/ARCHITECTURE.md (src/lock/order.ts). Reclaim only trylocks, so it never waits
 * on a page the caller holds. `tlb` is the CPU threads' TLB shootdown, when the mount has them.
 */

import type { CoherencePolicy } from '../policy/policy.ts';
import { PageLru } from './lru.ts';
import type { Mapping } from './mapping.ts';
import { PagePool } from './pool.ts';
import type { CpuTlbShootdown } from './rmap.ts';
import type { PageTracer } from './trace.ts';
import { PG_dirty, PG_writeback } from './types.ts';
import { VmStat } from './vmstat.ts';

export class PageCache {
  readonly pool: PagePool;
  /** The LRU, oldest first; delete then add moves a page to the tail. */
  readonly lru = new PageLru();
  readonly mappings = new Set<Mapping>();
  /** The CPU TLB shootdown of the CPU threads on this mount's mappings (none: no CPU threads). */
  tlb: CpuTlbShootdown | null = null;

  constructor(
    readonly pageSize: number,
    readonly hostPages: number,
    readonly policy: CoherencePolicy,
    /** Event counters; a remount passes the old ones so they run on over the whole session. */
    readonly vmstat: VmStat = new VmStat(),
  ) {
    this.pool = new PagePool(hostPages, pageSize);
  }

  /** --trace: the mount's page tracer (null: nothing traced). */
  tracer: PageTracer | null = null;

  /** The /proc/vmstat view: events plus gauges computed from the pages themselves. */
  snapshotVmstat(): Record<string, number> {
    let nrDirty = 0;
    let nrWriteback = 0;
    let nrMapped = 0;
    let nrDeviceEntries = 0;
    for (const m of this.mappings) {
      for (const e of m.i_pages.values()) {
        if (e.kind === 'device') {
          nrDeviceEntries++;
          continue;
        }
        if (e.flags & PG_dirty) nrDirty++;
        if (e.flags & PG_writeback) nrWriteback++;
        if (e.mapcount > 0) nrMapped++;
      }
    }
    const ev = this.vmstat.ev;
    return {
      nr_free_pages: this.pool.nrFree,
      nr_file_pages: this.pool.nrPages - this.pool.nrFree,
      nr_dirty: nrDirty,
      nr_writeback: nrWriteback,
      nr_mapped: nrMapped,
      nr_device_entries: nrDeviceEntries,
      ...ev,
      pgscan: ev.pgscan_direct,
      pgsteal: ev.pgsteal_direct,
    };
  }
}
