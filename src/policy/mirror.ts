/**
 * Jan Kara's mirror scheme (LSF/MM 2016) on a real GPU: the page-cache page A stays where it is and
 * the device gets a copy A' in one of its frames. Every hook reads a page's state (host A, device
 * A', CPU mappings), asks the one table (mirrorTable.ts) for the work, and does that work in the
 * table's order, a whole batch of pages phase by phase (WORK_ORDER), so that copies and device PTE
 * changes are batched: one copy command and one shootdown for a batch, not one per page.
 *
 * The policy owns one record per device copy (frame, permission, and whether its data is newer than
 * the disk even when the device never wrote it). A record is made when fault service commits a
 * page, before the device layer installs the PTE, so reclaim in the middle of a batch sees it.
 *
 * Lock order: the fs mutex (every hook runs inside an operation) > PG_locked (ascending index).
 * Fault service locks a few pages at a time (batchPages), so a tiny host budget still serves a batch
 * of any size. The device layer's mmu_interval sequence guards the install against invalidations.
 */
import {
  type DeviceFault,
  type DeviceMemory,
  type DeviceOutputSink,
  type DevicePageTable,
  type EvictedFrame,
  type EvictionOutcome,
  type FaultResolution,
  type FaultServiceContext,
  type FaultServicer,
  formatPages,
  type KernelKind,
  type KernelParams,
  type PteChange,
} from '../device/index.ts';
import { HmmlabError, isHmmlabError } from '../errors.ts';
import type { FaultInjector } from '../inject/inject.ts';
import {
  type AddressSpace,
  batchPages,
  type DeviceEntry,
  folio_clear_dirty,
  folio_clear_uptodate,
  folio_mark_dirty,
  folio_mark_uptodate,
  host_state,
  type Page,
  PageDirty,
  PageUptodate,
  page_cpu_access,
  page_mkclean,
  page_mkwrite,
  read_cache_page_locked,
  try_to_unmap,
  trylock_page,
  unlock_page,
  writepage_bounce,
} from '../mm/index.ts';
import { asMapping } from '../mm/mapping.ts';
import type { DeviceKernelResult, DevicePageColumns, DevicePolicy, DeviceRun } from './device.ts';
import {
  type DevicePerm,
  fmt,
  type MirrorEvent,
  mirrorTransition,
  type PageState,
  type Transition,
  type Work,
} from './mirrorTable.ts';
import type { CoherencePolicy, CpuAccess } from './policy.ts';

/** The counters the mirror policy adds to fs.vmstat(), /proc/vmstat style. */
export const MIRROR_COUNTERS = [
  'device_faults', // threads that faulted (raw)
  'device_faults_unique', // faults serviced after coalescing
  'device_read_faults',
  'device_write_faults',
  'device_faults_failed', // refused accesses (page_mkwrite said no): SIGBUS-like
  'device_faults_retried', // left for the next replay (no frame, or an invalidation raced)
  'device_mmu_interval_retries', // of those, grants whose install an invalidation raced (mmu_interval_read_retry)
  'device_fault_batches',
  'device_launches',
  'device_replays',
  'device_kernels',
  'device_bytes_h2d',
  'device_bytes_d2h',
  'device_copies_to_device', // pages copied A -> A'
  'device_copybacks', // pages copied A' -> A (or to a bounce page) because the device wrote them
  'device_copybacks_spared', // write-protected pages the device never wrote: no copy needed
  'device_pulls', // readpage of a device entry served from the device, not the disk
  'device_bounce_writebacks', // device entries written to disk through a bounce page
  'device_write_protects', // A' made read-only (shootdown)
  'device_revocations', // A' removed from the device page table
  'device_shootdowns',
  'device_mkwrite', // page_mkwrite calls from device write faults
  'device_mkwrite_refused',
  'device_evictions', // frames taken back by device eviction
  'device_evictions_dirty', // of which the device had written (copied back or bounced to disk)
  'device_frames_used',
  'device_frames_total',
] as const;

export type MirrorCounter = (typeof MIRROR_COUNTERS)[number];

/** The policy's record of one device copy A'. */
interface Mirror {
  frame: number;
  perm: 'ro' | 'rw';
  /**
   * A' holds data the disk does not have even if the device never writes it: A was dirty when the
   * device got write access (its data moved into A' with it). Cleared when it reaches the disk.
   */
  diskStale: boolean;
  /**
   * The device's writes are on their way back: the DIRTY bit was taken from the PTE (write-protect,
   * revoke, eviction) and the bytes have not landed yet. A loss now loses them, so it names the page.
   */
  copyBack?: boolean;
}

/** The work fault service does itself; the rest of a fault's row would be a table bug. */
const FAULT_WORK: ReadonlySet<Work> = new Set([
  'readpage',
  'page_mkwrite',
  'page_mkclean',
  'try_to_unmap',
  'copy-to-device',
]);

/** One page of a batch the policy works on: where its data is and what the table says to do. */
interface Item {
  index: number;
  /** The host page A (locked by the caller), or null for a device entry with no page (bounce). */
  page: Page | null;
  state: PageState;
  t: Transition;
}

/** Device readahead for E pages: at most this many pages, and bytes, in one copy back. */
const PULL_AHEAD_PAGES = 16;
const PULL_AHEAD_BYTES = 1 << 20;

type Serialize = <T>(fn: () => Promise<T>) => Promise<T>;

const isLossError = (e: unknown): boolean =>
  isHmmlabError(e) && (e.code === 'EIO' || e.code === 'EGPU') && /device lost/i.test(e.message);

export class MirrorPolicy implements CoherencePolicy, DevicePolicy {
  readonly name = 'mirror';
  readonly hasDevice = true as const;
  /** Records of device copies, by address-space id then page index. */
  private readonly mirrors = new Map<number, Map<number, Mirror>>();
  /** The device address spaces this policy made (and must forget): another mount may share the device. */
  private readonly ownSpaces = new Set<number>();
  /** The mappings the device has seen (eviction reaches a page through its space id). */
  private readonly mappings = new Map<number, AddressSpace>();
  private readonly c = Object.fromEntries(MIRROR_COUNTERS.map((k) => [k, 0])) as Record<
    MirrorCounter,
    number
  >;
  /** Why the device is gone ('detached', or the loss); the policy is host-only from then on. */
  private gone: string | null = null;
  /** A kernel run is in flight: a loss now may have written any device-writable page. */
  private running = false;
  private serialize: Serialize = (fn) => fn();
  /** Bytes of read-only device entries copied back ahead of their readpage (see pullAhead). */
  private readonly readAhead = new WeakMap<Mirror, Uint8Array>();

  constructor(readonly dm: DeviceMemory) {}

  setSerializer(serialize: Serialize): void {
    this.serialize = serialize;
  }

  setInjector(inject: FaultInjector): void {
    this.dm.inject = inject;
  }

  // ---- state ----

  private records(m: AddressSpace): Map<number, Mirror> {
    let r = this.mirrors.get(m.id);
    if (!r) {
      r = new Map();
      this.mirrors.set(m.id, r);
      this.mappings.set(m.id, m);
      // Frames of this space come back to this policy, whoever else shares the device.
      this.dm.setEvictionHook((victims) => this.evict(victims), m.id);
      this.ownSpaces.add(m.id);
    }
    return r;
  }

  private record(m: AddressSpace, index: number): Mirror | undefined {
    return this.mirrors.get(m.id)?.get(index);
  }

  private space(m: AddressSpace): DevicePageTable {
    this.records(m);
    return this.dm.space(m.id);
  }

  /** A page's state in the table's letters: host from the page cache, device from the record. */
  private stateOf(m: AddressSpace, index: number, page: Page | null): PageState {
    const dev: DevicePerm = this.record(m, index)?.perm ?? '-';
    if (page) return { host: host_state(page), dev, cpu: page_cpu_access(page) };
    return { host: m.i_pages.get(index)?.kind === 'device' ? 'E' : '-', dev, cpu: '-' };
  }

  private plan(
    m: AddressSpace,
    index: number,
    page: Page | null,
    event: MirrorEvent,
    state?: PageState,
  ): Item {
    const s = state ?? this.stateOf(m, index, page);
    return { index, page, state: s, t: mirrorTransition(s, event) };
  }

  // ---- the device's side: fault service ----

  /**
   * The FaultServicer for `m`'s device address space (dm.runKernel calls it a batch at a time).
   * Frames first, in one allocation (it may evict others); then the faults a step of batchPages
   * pages at a time, each step locking its pages. A step that fails (a read of the disk, the copy)
   * leaves its pages as it found them; the steps before it stay granted and the run then fails.
   */
  private servicer(m: AddressSpace): FaultServicer {
    return async (faults, ctx) => {
      const seq = ctx.space.readBegin();
      const out: FaultResolution[] = faults.map(() => ({ ok: false, retry: true }));
      const recs = this.records(m);
      let frameOf: Map<number, number | null>;
      try {
        const fresh = faults.filter((f) => !recs.has(f.index));
        const frames = await ctx.allocFrames(fresh.map((f) => f.index));
        frameOf = new Map(fresh.map((f, i) => [f.index, frames[i]]));
      } catch (e) {
        ctx.fail(e);
        return out;
      }
      const step = batchPages(asMapping(m).host);
      for (let k = 0; k < faults.length; k += step) {
        try {
          await this.serviceStep(m, faults.slice(k, k + step), k, seq, ctx, frameOf, out);
        } catch (e) {
          ctx.fail(e);
          break;
        }
      }
      return out;
    };
  }

  /**
   * One step of fault service. Everything that can fail (readpage, page_mkwrite, the copy to the
   * device) comes before anything is committed; the commit (page flags, records, answers) cannot
   * fail. page_mkclean and try_to_unmap come before the copy, so the CPU cannot change A while
   * it is copied; done for a step that then fails, they only make the CPU fault again.
   */
  private async serviceStep(
    m: AddressSpace,
    faults: DeviceFault[],
    base: number,
    seq: number,
    ctx: FaultServiceContext,
    frameOf: Map<number, number | null>,
    out: FaultResolution[],
  ): Promise<void> {
    const recs = this.records(m);
    const locked: Page[] = [];
    const ready: {
      i: number;
      index: number;
      page: Page | null;
      it: Item;
      frame: number;
      wasDirty: boolean;
    }[] = [];
    try {
      for (const [j, f] of faults.entries()) {
        const rec = recs.get(f.index);
        const frame = rec?.frame ?? frameOf.get(f.index);
        if (frame == null) continue; // no frame now: it faults again on the replay
        const e = m.i_pages.get(f.index);
        let page: Page | null = null;
        if (e?.kind !== 'device') {
          page = await read_cache_page_locked(m, f.index); // readpage if absent
          locked.push(page);
        } else if (!rec) {
          throw new Error(`mirror: device entry ${f.index} of ${m.name} without a device copy`);
        }
        const it = this.plan(m, f.index, page, f.write ? 'device-write-fault' : 'device-read-fault');
        for (const w of it.t.work) {
          if (!FAULT_WORK.has(w)) throw new Error(`mirror: fault service cannot do ${w} (${fmt(it.state)})`);
        }
        const wasDirty = page ? PageDirty(page) : (rec?.diskStale ?? false);
        if (it.t.work.includes('page_mkwrite')) {
          this.c.device_mkwrite++;
          try {
            await page_mkwrite(m, f.index);
          } catch (err) {
            if (!isHmmlabError(err) || (err.code !== 'ENOSPC' && err.code !== 'EROFS')) throw err;
            this.c.device_mkwrite_refused++;
            out[base + j] = {
              ok: false,
              code: 'EFAULT',
              message: `page_mkwrite: ${err.code}: ${err.message}`,
            };
            continue;
          }
        }
        ready.push({ i: base + j, index: f.index, page, it, frame, wasDirty });
      }
      // mmu_interval_read_retry: an invalidation of a page since service began wins; it faults again.
      const raced = ctx.space.readRetry(
        seq,
        ready.map((r) => r.index),
      );
      const go = ready.filter((r) => !raced.has(r.index));
      const has = (r: (typeof go)[number], w: Work) => r.page !== null && r.it.t.work.includes(w);
      for (const r of go) {
        if (has(r, 'page_mkclean')) page_mkclean(r.page!);
        if (has(r, 'try_to_unmap')) try_to_unmap(r.page!);
      }
      const copies = go
        .filter((r) => has(r, 'copy-to-device'))
        .map((r) => ({ frame: r.frame, data: r.page!.data }));
      if (copies.length) {
        this.dm.copyToFrames(copies); // one writeBuffer per run of frames; data copied at the call
        this.c.device_copies_to_device += copies.length;
      }
      for (const r of go) {
        if (r.page && r.it.t.next.host === 'S') {
          folio_clear_uptodate(r.page);
          folio_mark_dirty(r.page);
        }
        const rec = recs.get(r.index);
        const perm = r.it.t.next.dev as 'ro' | 'rw';
        const diskStale = perm === 'rw' && (rec?.perm === 'rw' ? rec.diskStale : r.wasDirty);
        recs.set(r.index, { frame: r.frame, perm, diskStale });
        out[r.i] = { ok: true, frame: r.frame, perm };
      }
    } finally {
      for (const p of locked) unlock_page(p);
    }
  }

  async runDeviceKernel(
    m: AddressSpace,
    kind: KernelKind,
    params: KernelParams,
    sink?: DeviceOutputSink,
  ): Promise<DeviceKernelResult> {
    this.checkUsable(`device ${kind} on ${m.name}`);
    const space = this.space(m);
    this.running = true;
    let r: Awaited<ReturnType<DeviceMemory['runKernel']>>;
    try {
      r = await this.dm.runKernel(kind, space, params, this.servicer(m), sink);
    } catch (e) {
      throw this.lossOr(e); // while `running`: a loss counts every device-writable page as written
    } finally {
      this.running = false;
    }
    const c = r.counters;
    const run: DeviceRun = {
      faults: c.faultsRaw,
      uniqueFaults: c.faultsUnique,
      batches: c.batches,
      replays: r.replays,
      bytesToDevice: c.bytesHostToDevice,
      bytesToHost: c.bytesDeviceToHost,
      failed: r.failed.map((f) => ({ index: f.index, code: f.code, message: f.message })),
    };
    return { run, bytes: r.bytes, checksums: r.checksums };
  }

  // ---- the CPU's side: the CoherencePolicy hooks ----

  async cpuNeedsData(m: AddressSpace, pages: Page[], why: CpuAccess): Promise<void> {
    if (!this.live(m)) return this.afterLoss();
    const event: MirrorEvent =
      why === 'fault' || why === 'fault-around'
        ? 'cpu-read-fault'
        : why === 'writeback' || why === 'direct-io' || why === 'unmount'
          ? 'writeback'
          : 'cpu-read';
    const items = pages.filter((p) => this.record(m, p.index)).map((p) => this.plan(m, p.index, p, event));
    // readpage, page_mkclean and writepage are the page cache's to do after the hook.
    await this.guarded(() => this.pull(m, items, ['readpage', 'page_mkclean', 'writepage']));
  }

  async readpageFromDevice(m: AddressSpace, entry: DeviceEntry, page: Page): Promise<boolean> {
    const rec = this.record(m, entry.index);
    if (!this.live(m) || !rec) {
      await this.afterLoss();
      return false;
    }
    // The page cache did alloc-page: A is new, locked and empty; the state is still E.
    const it = this.plan(m, entry.index, page, 'cpu-read', { host: 'E', dev: rec.perm, cpu: '-' });
    if (rec.perm === 'ro')
      return this.guarded(
        () => this.pullAhead(m, it, rec),
        () => false,
      );
    return this.guarded(
      async () => {
        await this.pull(m, [it], ['alloc-page']);
        this.c.device_pulls++;
        return true;
      },
      () => false,
    );
  }

  /**
   * readpages of device entries (readahead over E pages): one shootdown for the writable ones and
   * one copy for all, instead of a round trip a page.
   */
  async readpagesFromDevice(m: AddressSpace, entries: DeviceEntry[], pages: Page[]): Promise<boolean[]> {
    const have = entries.map((e) => this.live(m) && this.record(m, e.index) !== undefined);
    if (!this.live(m)) await this.afterLoss();
    const items: Item[] = [];
    for (const [k, e] of entries.entries()) {
      const rec = have[k] ? this.record(m, e.index) : undefined;
      if (rec)
        items.push(this.plan(m, e.index, pages[k], 'cpu-read', { host: 'E', dev: rec.perm, cpu: '-' }));
    }
    if (items.length === 0) return have;
    return this.guarded(
      async () => {
        await this.pull(m, items, ['alloc-page']);
        this.c.device_pulls += items.length;
        return have;
      },
      () => entries.map(() => false),
    );
  }

  /**
   * readpage of an E page whose A' is read-only (E ro -> C: copy-back only). Its read-only
   * neighbours that are device entries too come back in the same copy (device readahead): a
   * read-only frame cannot change, so their bytes wait here until readpage asks for them.
   */
  private async pullAhead(m: AddressSpace, it: Item, rec: Mirror): Promise<boolean> {
    let data = this.readAhead.get(rec);
    if (data) {
      this.readAhead.delete(rec);
    } else {
      const window = Math.max(1, Math.min(PULL_AHEAD_PAGES, Math.floor(PULL_AHEAD_BYTES / m.pageSize)));
      const ahead: Mirror[] = [];
      for (let i = it.index + 1; i < it.index + window; i++) {
        const r = this.record(m, i);
        if (m.i_pages.get(i)?.kind !== 'device' || r?.perm !== 'ro' || this.readAhead.has(r)) break;
        ahead.push(r);
      }
      const bytes = await this.dm.copyFromFrames([rec.frame, ...ahead.map((r) => r.frame)]);
      data = bytes[0];
      for (const [k, r] of ahead.entries()) this.readAhead.set(r, bytes[k + 1]);
    }
    if (!it.t.work.includes('copy-back') || it.t.next.host !== 'C')
      throw new Error(`mirror: E ro readpage is not a plain copy-back (${fmt(it.state)})`);
    it.page!.data.set(data);
    folio_mark_uptodate(it.page!);
    this.c.device_copybacks++;
    this.c.device_pulls++;
    return true;
  }

  async cpuWillWrite(m: AddressSpace, pages: Page[]): Promise<void> {
    if (!this.live(m)) return this.afterLoss();
    const items = pages
      .filter((p) => this.record(m, p.index))
      .map((p) => this.plan(m, p.index, p, 'cpu-write'));
    await this.guarded(() => this.pull(m, items, []));
  }

  /**
   * Writeback of device entries: write-protect every E page A' holds writable (one shootdown),
   * bounce out (one copy) those the device wrote or whose data the disk lacks, and write each;
   * E rw -> E ro for each whose write landed. A failed copy or write gives the device back its
   * write permission and DIRTY bit for those pages: they are still to be written back.
   */
  async writebackDeviceEntries(
    m: AddressSpace,
    entries: DeviceEntry[],
    writepage: (index: number, data: Uint8Array) => Promise<void>,
  ): Promise<number> {
    if (!this.live(m)) {
      await this.afterLoss();
      return 0;
    }
    const items = entries
      .map((e) => ({ index: e.index, rec: this.record(m, e.index) }))
      .filter((x): x is { index: number; rec: Mirror } => x.rec !== undefined)
      .filter((x) =>
        this.plan(m, x.index, null, 'writeback', { host: 'E', dev: x.rec.perm, cpu: '-' }).t.work.includes(
          'bounce-writeback',
        ),
      );
    if (items.length === 0) return 0;
    return this.guarded(
      async () => {
        const space = this.space(m);
        const changes = await this.dm.protect(
          space,
          items.map((x) => x.index),
          { cleanDirty: true },
        );
        const wrote = new Map(changes.map((c) => [c.index, c.dirty]));
        const copy = items.filter((x) => wrote.get(x.index) || x.rec.diskStale);
        const recs = this.records(m);
        this.markCopyBack(recs, changes, true);
        let data: Uint8Array[] = [];
        try {
          if (copy.length) data = await this.dm.copyFromFrames(copy.map((x) => x.rec.frame));
        } catch (e) {
          await this.dm.restore(space, changes);
          this.markCopyBack(recs, changes, false);
          throw e;
        }
        const failed = new Set<number>();
        let error: unknown;
        for (const [i, x] of copy.entries()) {
          try {
            await writepage(x.index, data[i]);
          } catch (e) {
            failed.add(x.index);
            error ??= e;
            continue;
          }
          this.c.device_copybacks++;
          this.c.device_bounce_writebacks++;
        }
        for (const x of items) {
          if (failed.has(x.index)) continue;
          x.rec.perm = 'ro';
          x.rec.diskStale = false;
          x.rec.copyBack = false;
        }
        this.c.device_copybacks_spared += items.length - copy.length;
        if (failed.size) {
          const back = changes.filter((c) => failed.has(c.index));
          await this.dm.restore(space, back);
          this.markCopyBack(recs, back, false);
          throw error;
        }
        return copy.length;
      },
      () => 0,
    );
  }

  async invalidateRange(m: AddressSpace, first: number, last: number): Promise<void> {
    const recs = this.mirrors.get(m.id);
    if (!recs) return;
    if (!this.live(m)) return this.afterLoss();
    const items: Item[] = [];
    for (const index of [...recs.keys()].sort((a, b) => a - b)) {
      if (index < first || index > last) continue;
      const e = m.i_pages.get(index);
      items.push(this.plan(m, index, e?.kind === 'page' ? e : null, 'invalidate'));
    }
    // try_to_unmap and drop-page are the page cache's (truncate_inode_pages_range).
    await this.guarded(async () => {
      const revoke = items.filter((it) => it.t.work.includes('device-revoke')).map((it) => it.index);
      await this.revoke(m, revoke);
    });
    // The whole file is gone from the cache (unmount): forget its address space, on the device
    // too (its page table and fault buffer), or every mount would leave a pair of GPU buffers.
    if (first === 0 && last === Number.MAX_SAFE_INTEGER && recs.size === 0) {
      this.mirrors.delete(m.id);
      this.mappings.delete(m.id);
      this.dm.forget(m.id);
      this.ownSpaces.delete(m.id);
    }
  }

  reclaimDecision(m: AddressSpace, page: Page): 'free' | 'device-entry' | 'keep' {
    if (this.gone || !this.record(m, page.index)) return 'free';
    const t = mirrorTransition(this.stateOf(m, page.index, page), 'host-reclaim');
    return t.next.host === 'E' ? 'device-entry' : 'free';
  }

  makeDeviceEntry(m: AddressSpace, page: Page): DeviceEntry {
    const rec = this.record(m, page.index);
    if (!rec)
      throw new Error(`mirror: page ${page.index} of ${m.name} has no device copy to leave an entry for`);
    return { kind: 'device', index: page.index, token: rec };
  }

  // ---- the work, phase by phase ----

  /**
   * Bring device data back to A and/or take the device's access away, for a batch of pages: the
   * table's device-protect, copy-back, alloc-page and device-revoke. One shootdown for all pages
   * that are write-protected (or revoked: a revoke is a protect too), one copy for all copy-backs.
   * `leave`: work the caller does itself.
   */
  private async pull(m: AddressSpace, items: Item[], leave: Work[]): Promise<void> {
    const mine: Work[] = ['device-protect', 'copy-back', 'device-revoke'];
    const todo = items.filter((it) => it.t.work.some((w) => mine.includes(w)));
    for (const it of todo) {
      for (const w of it.t.work) {
        if (!mine.includes(w) && !leave.includes(w))
          throw new Error(`mirror: no one does ${w} for page ${it.index} (${fmt(it.state)})`);
      }
    }
    if (todo.length === 0) return;
    const space = this.space(m);
    const recs = this.records(m);
    const has = (it: Item, w: Work) => it.t.work.includes(w);
    const revoking = todo.filter((it) => has(it, 'device-revoke'));
    const protecting = todo.filter((it) => has(it, 'device-protect') && !has(it, 'device-revoke'));
    const wrote = new Map<number, boolean>();
    const taken: PteChange[] = [];
    // copy-back: only what the device wrote, unless A is new (E): A's bytes are still valid otherwise.
    const copyBack = (it: Item) =>
      has(it, 'copy-back') && (it.state.host === 'E' || wrote.get(it.index) === true);
    try {
      if (protecting.length) {
        const changes = await this.dm.protect(
          space,
          protecting.map((it) => it.index),
          { cleanDirty: true },
        );
        for (const ch of changes) wrote.set(ch.index, ch.dirty);
        taken.push(...changes);
      }
      if (revoking.length) {
        const changes = await this.dm.revoke(
          space,
          revoking.map((it) => it.index),
        );
        for (const ch of changes) wrote.set(ch.index, ch.dirty);
        taken.push(...changes);
      }
      this.markCopyBack(recs, taken, true);
      const copy = todo.filter(copyBack);
      if (copy.length) {
        const data = await this.dm.copyFromFrames(copy.map((it) => recs.get(it.index)!.frame));
        copy.forEach((it, i) => {
          it.page!.data.set(data[i]);
        });
        this.c.device_copybacks += copy.length;
      }
      this.markCopyBack(recs, taken, false);
    } catch (e) {
      // The bytes did not land: the device keeps its copy, its permission and its DIRTY bit, so
      // nothing is lost and the CPU's access can be tried again.
      if (taken.length) await this.dm.restore(space, taken);
      this.markCopyBack(recs, taken, false);
      throw e;
    }
    this.c.device_copybacks_spared += todo.filter(
      (it) => has(it, 'copy-back') && it.state.host !== 'E' && !wrote.get(it.index),
    ).length;
    for (const it of todo) {
      const { next } = it.t;
      if (it.page && (next.host === 'C' || next.host === 'D')) {
        folio_mark_uptodate(it.page);
        if (next.host === 'D') folio_mark_dirty(it.page);
      }
      const rec = recs.get(it.index)!;
      if (next.dev === 'ro') {
        rec.perm = 'ro';
        rec.diskStale = false; // A holds the data now (dirty if the disk lacks it)
      }
    }
    if (revoking.length) {
      const frames = revoking.map((it) => recs.get(it.index)!.frame);
      for (const it of revoking) recs.delete(it.index);
      this.dm.freeFrames(frames);
    }
  }

  /** Mark the records of the pages whose DIRTY bit `changes` took as on their way back (or not). */
  private markCopyBack(recs: Map<number, Mirror>, changes: PteChange[], on: boolean): void {
    for (const ch of changes) {
      const rec = recs.get(ch.index);
      if (rec && ch.dirty) rec.copyBack = on;
    }
  }

  /** device-revoke for pages the caller has written back (or whose data is being discarded). */
  private async revoke(m: AddressSpace, indices: number[]): Promise<void> {
    if (indices.length === 0) return;
    const recs = this.records(m);
    await this.dm.revoke(this.space(m), indices);
    const frames = indices.map((i) => recs.get(i)!.frame);
    for (const i of indices) recs.delete(i);
    this.dm.freeFrames(frames);
  }

  /**
   * Device eviction (the device layer revoked the victims' PTEs already): a frame the device wrote
   * goes back to its host page (S -> D), or to disk through a bounce page when A is gone (E); a
   * clean one is dropped. One copy for all the victims that need one. Each host page is changed
   * under its page lock; a victim whose page is locked now, or whose copy or write fails, is kept
   * (the device layer puts it back as it was), so an eviction that fails loses nothing.
   */
  private async evict(victims: EvictedFrame[]): Promise<EvictionOutcome> {
    const work: { m: AddressSpace; v: EvictedFrame; it: Item; rec: Mirror; copy: boolean }[] = [];
    const kept: EvictedFrame[] = [];
    const locked: Page[] = [];
    try {
      for (const v of victims) {
        const m = this.mappings.get(v.space);
        const rec = m ? this.record(m, v.index) : undefined;
        if (!m || !rec || rec.frame !== v.frame) continue;
        const e = m.i_pages.get(v.index);
        const page = e?.kind === 'page' ? e : null;
        if (page) {
          if (!trylock_page(page)) {
            kept.push(v); // busy: another victim will do
            continue;
          }
          locked.push(page);
        }
        const it = this.plan(m, v.index, page, 'device-evict');
        if (v.dirty) rec.copyBack = true; // the DIRTY bit went with the revoke
        const copy =
          (it.t.work.includes('copy-back') && v.dirty) ||
          (it.t.work.includes('bounce-writeback') && (v.dirty || rec.diskStale));
        work.push({ m, v, it, rec, copy });
      }
      const copies = work.filter((w) => w.copy);
      let data: Uint8Array[] = [];
      try {
        if (copies.length) data = await this.dm.copyFromFrames(copies.map((w) => w.v.frame));
      } catch (error) {
        return { kept: [...kept, ...work.map((w) => w.v)], error };
      }
      let k = 0;
      for (const [n, w] of work.entries()) {
        const { m, v, it } = w;
        const bytes = w.copy ? data[k++] : null;
        if (it.state.host === 'E') {
          if (bytes) {
            try {
              await writepage_bounce(m, v.index, bytes);
            } catch (error) {
              return { kept: [...kept, ...work.slice(n).map((x) => x.v)], error };
            }
            this.c.device_bounce_writebacks++;
          }
          if (m.i_pages.get(v.index)?.kind === 'device') m.i_pages.delete(v.index);
        } else if (it.page && it.t.work.includes('copy-back')) {
          if (bytes) it.page.data.set(bytes);
          else this.c.device_copybacks_spared++;
          folio_mark_uptodate(it.page);
          folio_mark_dirty(it.page);
        }
        if (bytes) this.c.device_copybacks++;
        this.records(m).delete(v.index);
        this.c.device_evictions++;
        if (v.dirty) this.c.device_evictions_dirty++;
      }
      return { kept };
    } finally {
      for (const p of locked) unlock_page(p);
    }
  }

  // ---- detach and loss ----

  /**
   * Orderly detach (device hot-unplug): every page the device holds is copied back (dirty data to
   * its host page, or to disk where A is gone), every device PTE revoked. Device ops fail with
   * ENODEV afterwards; the file's data is all on the host side.
   */
  detach(): Promise<void> {
    return this.serialize(async () => {
      if (this.gone) return;
      await this.guarded(async () => {
        await this.dm.detach();
      });
      // Every frame came back: the address spaces (page tables, fault buffers) go too.
      for (const id of this.mirrors.keys()) {
        if (!this.dm.gpu.lost) this.dm.forget(id);
        this.ownSpaces.delete(id);
      }
      this.mirrors.clear();
      this.gone = 'detached';
    });
  }

  /** Device ops are possible (not detached, not lost); else ENODEV, or the loss's EIO first. */
  private checkUsable(what: string): void {
    if (!this.gone && this.dm.gpu.lost) {
      const err = this.onLoss();
      if (err) throw err;
    }
    if (this.gone) throw new HmmlabError('ENODEV', `${what}: no device: ${this.gone}`);
  }

  /** Whether the device can serve `m` now; false once it is gone (the loss is reported first). */
  private live(_m: AddressSpace): boolean {
    return !this.gone && !this.dm.gpu.lost;
  }

  /** Called by a hook that found the device gone: report a loss not reported yet. */
  private async afterLoss(): Promise<void> {
    if (!this.gone && this.dm.gpu.lost) {
      const err = this.onLoss();
      if (err) throw err;
    }
  }

  /** Run device work; a loss on the way becomes the loss's EIO (or the fallback when nothing was lost). */
  private async guarded<T>(fn: () => Promise<T>, fallback?: () => T): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      const err = this.lossOr(e);
      if (err === null && fallback) return fallback();
      throw err ?? e;
    }
  }

  /** For an error from device work: the loss report if the device was lost, else the error. */
  private lossOr(e: unknown): unknown {
    if (this.gone || !(this.dm.gpu.lost || isLossError(e))) return e;
    return this.onLoss() ?? e;
  }

  /**
   * The device is gone without a detach. Pages whose newest data was only on it are lost and
   * named: those the device wrote (or may have written: a kernel was running), and device entries
   * whose data the disk lacks. Every host page keeps its data: an S page is uptodate again with
   * A's bytes (the newest the host has), dirty when they are newer than the disk, so they are
   * written back. Device entries leave the index (their pages read the disk again). Returns EIO
   * naming the lost pages, or null when nothing was lost.
   */
  private onLoss(): HmmlabError | null {
    const reason = this.dm.gpu.lostReason ?? 'device lost';
    this.gone = `the GPU was lost (${reason})`;
    const lost: string[] = [];
    for (const [id, recs] of this.mirrors) {
      const m = this.mappings.get(id)!;
      let dirty = new Set<number>();
      try {
        dirty = this.dm.space(id).dirty; // the DIRTY bits of the last readback
      } catch {
        // a space never created on the GPU: nothing on it was written
      }
      const gone: number[] = [];
      for (const [index, rec] of recs) {
        const e = m.i_pages.get(index);
        const wrote = rec.copyBack === true || (rec.perm === 'rw' && (this.running || dirty.has(index)));
        if (e?.kind === 'device') {
          if (wrote || (rec.perm === 'rw' && rec.diskStale)) gone.push(index);
          m.i_pages.delete(index);
        } else if (e && rec.perm === 'rw' && PageDirty(e) && !PageUptodate(e)) {
          if (wrote) gone.push(index);
          // A's bytes are the data as it was before the device took the page: keep them, dirty
          // only when the disk lacks them (A was dirty when the device got write access).
          folio_mark_uptodate(e);
          if (!rec.diskStale) folio_clear_dirty(e);
        }
      }
      if (gone.length) lost.push(`${formatPages(gone)} of ${m.name}`);
    }
    this.mirrors.clear();
    if (lost.length === 0) return null;
    return new HmmlabError(
      'EIO',
      `device lost: dirty data of pages ${lost.join('; ')} lost (${reason}); the rest is read from disk again`,
    );
  }

  // ---- snapshots and counters ----

  devicePage(m: AddressSpace, index: number): DevicePageColumns {
    const rec = this.record(m, index);
    if (!rec) return { dev: '-', frame: null, devDirty: false };
    const space = this.gone ? undefined : this.dm.space(m.id);
    return { dev: rec.perm, frame: rec.frame, devDirty: space?.dirty.has(index) ?? false };
  }

  deviceIndices(m: AddressSpace): number[] {
    return [...(this.mirrors.get(m.id)?.keys() ?? [])].sort((a, b) => a - b);
  }

  /** The device layer's own view of a page (its PTE shadow), for the invariant checker. */
  installedPte(m: AddressSpace, index: number): { frame: number; perm: string } | undefined {
    if (this.gone || !this.mirrors.has(m.id)) return undefined;
    return this.dm.space(m.id).entries.get(index);
  }

  /** Whether the device is gone (detached or lost). */
  get detached(): boolean {
    return this.gone !== null;
  }

  stats(): Record<string, number> {
    const d = this.dm.counters;
    const s = this.c;
    s.device_faults = d.faultsRaw;
    s.device_faults_unique = d.faultsUnique;
    s.device_read_faults = d.faultsRead;
    s.device_write_faults = d.faultsWrite;
    s.device_faults_failed = d.faultsFailed;
    s.device_faults_retried = d.faultsRetried;
    s.device_mmu_interval_retries = d.mmuIntervalRetries;
    s.device_fault_batches = d.batches;
    s.device_launches = d.launches;
    s.device_replays = d.replays;
    s.device_kernels = d.kernels;
    s.device_bytes_h2d = d.bytesHostToDevice;
    s.device_bytes_d2h = d.bytesDeviceToHost;
    s.device_shootdowns = d.shootdowns;
    s.device_write_protects = d.writeProtects;
    s.device_revocations = d.revocations;
    s.device_frames_total = this.dm.pool.devicePages;
    s.device_frames_used = this.dm.pool.devicePages - this.dm.pool.freeCount;
    return { ...s };
  }

  /** The invariant checker's read-only view (DevicePolicy.checkView): the device memory and the records. */
  checkView() {
    return {
      memory: this.dm,
      record: (m: AddressSpace, index: number) => this.record(m, index),
      ownsSpace: (id: number) => this.ownSpaces.has(id),
    };
  }
}
