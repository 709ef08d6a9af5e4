/**
 * The device-policy core: what Kara's mirror (mirror.ts) and Glisse's migrate (migrate.ts) share,
 * so that each scheme is only its table (mirrorTable.ts, migrateTable.ts) and the few hooks where
 * its rules differ. The core owns one record per device copy A' (frame, permission, whether its data
 * is newer than the disk), the device address spaces it made, fault service (frames, then steps of a
 * few locked pages: readpage and page_mkwrite, the CPU mappings, one copy, the commit), kernel runs,
 * the copy-back of device data (write-protect or revoke, one copy, commit or restore), writeback of
 * device entries through a bounce page, invalidation, device eviction (one copy, then each victim to
 * its host page or to disk), detach and device loss, counters and snapshot columns.
 *
 * Every action starts from a page's state (host A, device A', CPU mappings), asks the scheme's
 * table for the row and does the row's work, a whole batch phase by phase in WORK_ORDER. Work that
 * can fail comes before anything is committed; a failed copy back puts the device's permission and
 * DIRTY bit back (dm.restore), so the operation can be run again; only a lost device loses data,
 * and then it names the pages.
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
  type PullResult,
} from '../device/index.ts';
import { HmmlabError, isHmmlabError } from '../errors.ts';
import type { FaultInjector } from '../inject/inject.ts';
import { planted } from '../inject/planted.ts';
import {
  type AddressSpace,
  batchPages,
  type DeviceEntry,
  folio_clear_dirty,
  folio_clear_uptodate,
  folio_mark_dirty,
  folio_mark_uptodate,
  host_state,
  lock_entry,
  type Page,
  PageDirty,
  PageUptodate,
  page_cpu_access,
  page_mkclean,
  page_mkwrite,
  read_cache_pages_locked,
  replace_page_cache_entry,
  tlb_finish_mmu,
  tlb_gather_mmu,
  try_to_unmap,
  trylock_entry,
  trylock_page,
  unlock_entry,
  unlock_page,
  writepage_bounce,
} from '../mm/index.ts';
import { asMapping } from '../mm/mapping.ts';
import type {
  DeviceCheckView,
  DeviceCopyRecord,
  DeviceKernelResult,
  DevicePageColumns,
  DevicePolicy,
  DevicePrefetch,
  DeviceRun,
} from './device.ts';
import type { CoherencePolicy, CpuAccess, CpuWrite, InvalidateWhy } from './policy.ts';
import {
  type DeviceEvent,
  type DevicePerm,
  fmt,
  type PageState,
  type SchemeTable,
  type Transition,
  type Work,
} from './scheme.ts';

/** The counters every device policy adds to fs.vmstat(), /proc/vmstat style: the same under both schemes. */
export const DEVICE_COUNTERS = [
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
  'device_copies_to_device', // pages copied A -> A' (fault service)
  'device_copybacks', // pages copied A' -> host (to A, to a bounce page for the disk, or ahead of readpage)
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

/** The core's record of one device copy A'. */
export interface DeviceCopy extends DeviceCopyRecord {
  frame: number;
  perm: 'ro' | 'rw';
  /**
   * A' holds data the disk does not have even if the device never writes it: A was dirty when its
   * data moved into A' (mirror: with write access; migrate: with the page), or a write(2) bounced
   * into it. Cleared when it reaches the disk.
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
  'device-entry',
]);

/** One page of a batch the core works on: where its data is and what the table says to do. */
export interface Item {
  index: number;
  /** The host page A (locked by the caller), or null for a device entry with no page (bounce). */
  page: Page | null;
  /** The event whose row `t` is (--trace names it). */
  event: DeviceEvent;
  state: PageState;
  t: Transition;
}

/** A victim of device eviction, with its row. `page`: its host page, locked (resident or new). */
interface EvictWork {
  m: AddressSpace;
  v: EvictedFrame;
  it: Item;
  rec: DeviceCopy;
  /** Whether its frame must be copied out (the device wrote it, or A is new, or the disk lacks it). */
  copy: boolean;
  /** A page allocated for it (migrate home): given back to the entry if the eviction fails. */
  fresh: boolean;
  /** The device entry it replaced, if any: the one put back (a waiter on it checks it by identity). */
  entry?: DeviceEntry;
}

type Serialize = <T>(fn: () => Promise<T>) => Promise<T>;

const isLossError = (e: unknown): boolean =>
  isHmmlabError(e) && (e.code === 'EIO' || e.code === 'EGPU') && /device lost/i.test(e.message);

const CPU_EVENT: Record<CpuAccess, DeviceEvent> = {
  read: 'cpu-read',
  readahead: 'cpu-read',
  'write-partial': 'cpu-read',
  truncate: 'cpu-read',
  fault: 'cpu-read-fault',
  'fault-around': 'cpu-read-fault',
  writeback: 'writeback',
  'direct-io': 'writeback',
  unmount: 'unmount',
};

export abstract class DevicePolicyCore implements CoherencePolicy, DevicePolicy {
  abstract readonly name: string;
  /** The scheme: every path asks it for the row of each page's state. */
  abstract readonly table: SchemeTable;
  readonly hasDevice = true as const;
  /** readpage found a device entry: the scheme's rule (mirror pulls A back beside A'; migrate moves it home). */
  abstract readpageFromDevice(mapping: AddressSpace, entry: DeviceEntry, page: Page): Promise<boolean>;
  /** Records of device copies, by address-space id then page index. */
  private readonly copies = new Map<number, Map<number, DeviceCopy>>();
  /** The device address spaces this policy made (and must forget): another mount may share the device. */
  private readonly ownSpaces = new Set<number>();
  /** The mappings the device has seen (eviction reaches a page through its space id). */
  protected readonly mappings = new Map<number, AddressSpace>();
  /** The counters: DEVICE_COUNTERS and the scheme's own. */
  protected readonly c: Record<string, number>;
  /** Why the device is gone ('detached', or the loss); the policy is host-only from then on. */
  private gone: string | null = null;
  /** Kernel runs in flight: a loss now may have written any device-writable page. */
  private running = 0;
  private serialize: Serialize = (fn) => fn();

  constructor(
    readonly dm: DeviceMemory,
    ownCounters: readonly string[] = [],
  ) {
    this.c = Object.fromEntries([...DEVICE_COUNTERS, ...ownCounters].map((k) => [k, 0]));
  }

  setSerializer(serialize: Serialize): void {
    this.serialize = serialize;
  }

  setInjector(inject: FaultInjector): void {
    this.dm.inject = inject;
  }

  // ---- state ----

  protected records(m: AddressSpace): Map<number, DeviceCopy> {
    let r = this.copies.get(m.id);
    if (!r) {
      r = new Map();
      this.copies.set(m.id, r);
      this.mappings.set(m.id, m);
      // Frames of this space come back to this policy, whoever else shares the device.
      this.dm.setEvictionHook((victims) => this.evict(victims), m.id);
      this.ownSpaces.add(m.id);
    }
    return r;
  }

  protected record(m: AddressSpace, index: number): DeviceCopy | undefined {
    return this.copies.get(m.id)?.get(index);
  }

  protected space(m: AddressSpace): DevicePageTable {
    this.records(m);
    return this.dm.space(m.id);
  }

  /** A page's state in the table's letters: host from the page cache, device from the record. */
  protected stateOf(m: AddressSpace, index: number, page: Page | null): PageState {
    const dev: DevicePerm = this.record(m, index)?.perm ?? '-';
    if (page) return { host: host_state(page), dev, cpu: page_cpu_access(page) };
    return { host: m.i_pages.get(index)?.kind === 'device' ? 'E' : '-', dev, cpu: '-' };
  }

  protected plan(
    m: AddressSpace,
    index: number,
    page: Page | null,
    event: DeviceEvent,
    state?: PageState,
  ): Item {
    const s = state ?? this.stateOf(m, index, page);
    return { index, page, event, state: s, t: this.transition(s, event) };
  }

  /** The table's rows looked up so far: a row depends on the state and the event only. */
  private readonly rows = new Map<string, Transition>();

  /** The table's row for (state, event), looked up once (fault service asks it for every page). */
  protected transition(s: PageState, event: DeviceEvent): Transition {
    const key = `${s.host}${s.dev}${s.cpu}${event}`;
    let t = this.rows.get(key);
    if (!t) {
      t = this.table.transition(s, event); // throws for a state the table does not allow: not kept
      this.rows.set(key, t);
    }
    return t;
  }

  /** --trace: the rows these items' work carried out, each page with its state now. */
  protected traceItems(m: AddressSpace, items: readonly Item[]): void {
    const tr = asMapping(m).host.tracer;
    if (!tr) return;
    for (const it of items) tr.emit(m, it.index, it.event, it.state, it.t.work);
  }

  /** The plan for device entry `index` (no host page), whose record is `rec`. */
  protected planEntry(m: AddressSpace, index: number, rec: DeviceCopy, event: DeviceEvent): Item {
    return this.plan(m, index, null, event, { host: 'E', dev: rec.perm, cpu: '-' });
  }

  /** Work of `items` that is none of `mine` nor `leave` (the page cache's): a table bug. */
  protected checkWork(items: Item[], mine: readonly Work[], leave: readonly Work[]): void {
    for (const it of items) {
      for (const w of it.t.work) {
        if (!mine.includes(w) && !leave.includes(w))
          throw new Error(`${this.name}: no one does ${w} for page ${it.index} (${fmt(it.state)})`);
      }
    }
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
   * One step of fault service, the table's device-fault row for each page. Everything that can
   * fail (readpage, page_mkwrite, the copy to the device) comes before anything is committed; the
   * commit (page flags, the page leaving for a device entry, records, answers) cannot fail.
   * page_mkclean and try_to_unmap come before the copy, so the CPU cannot change A while it is
   * copied; done for a step that then fails, they only make the CPU fault again. A page whose data
   * the disk lacks leaves the host only once its copy has landed on the device (a queue drain).
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
    const locked = new Set<Page>();
    const lockedEntries = new Set<DeviceEntry>();
    const ready: {
      i: number;
      index: number;
      page: Page | null;
      it: Item;
      frame: number;
      wasDirty: boolean;
    }[] = [];
    try {
      // Lock the pages in ascending index order (the faults are sorted): the host pages a run at a
      // time, readpage for the absent ones of a run in one read of the disk; a device entry, which
      // has no host page, by its own lock, and it must still stand once it is ours.
      const frameFor = (f: DeviceFault) => recs.get(f.index)?.frame ?? frameOf.get(f.index);
      // The records as service found them: a CPU path may revoke or replace one while this waits
      // for a lock; then that frame is no longer ours and the access faults again.
      const rec0 = new Map(faults.map((f) => [f.index, recs.get(f.index)]));
      const pageOf = new Map<number, Page>();
      const entryOf = new Map<number, DeviceEntry>();
      let run: number[] = [];
      const flush = async () => {
        const r = run;
        run = [];
        if (r.length === 0) return;
        for (const p of await read_cache_pages_locked(m, r)) {
          locked.add(p);
          pageOf.set(p.index, p);
        }
      };
      for (const f of faults) {
        if (frameFor(f) == null) continue;
        const e = m.i_pages.get(f.index);
        if (e?.kind !== 'device') {
          run.push(f.index);
          continue;
        }
        await flush();
        await lock_entry(m, e);
        lockedEntries.add(e);
        if (m.i_pages.get(f.index) === e) entryOf.set(f.index, e);
      }
      await flush();
      for (const [j, f] of faults.entries()) {
        const page = pageOf.get(f.index) ?? null;
        if (!page && !entryOf.has(f.index)) continue; // no frame, or pulled back meanwhile: it faults again
        const rec = recs.get(f.index);
        const frame = frameFor(f);
        if (rec !== rec0.get(f.index) || frame == null) continue;
        if (!page && !rec) {
          throw new Error(`${this.name}: device entry ${f.index} of ${m.name} without a device copy`);
        }
        const it = this.plan(m, f.index, page, f.write ? 'device-write-fault' : 'device-read-fault');
        for (const w of it.t.work) {
          if (!FAULT_WORK.has(w))
            throw new Error(`${this.name}: fault service cannot do ${w} (${fmt(it.state)})`);
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
      // The CPU's access goes (or loses write) before A is copied or the device may write it: once
      // no CPU thread is inside an access under the old PTEs (the shootdown).
      const tlb = tlb_gather_mmu();
      for (const r of go) {
        if (has(r, 'page_mkclean')) page_mkclean(r.page!, tlb);
        if (has(r, 'try_to_unmap')) try_to_unmap(r.page!, tlb);
      }
      await tlb_finish_mmu(asMapping(m).host, tlb);
      const copies = go.filter((r) => has(r, 'copy-to-device'));
      if (copies.length) {
        // Staged: A's bytes are in the staging ring when this returns (the page may be unlocked);
        // the batch's copies are submitted together before its PTEs are installed.
        await ctx.copyToFrames(copies.map((r) => ({ frame: r.frame, data: r.page!.data })));
        this.c.device_copies_to_device += copies.length;
      }
      // The host copy of data the disk lacks is freed only once the device has it.
      if (go.some((r) => has(r, 'device-entry') && r.wasDirty)) await this.dm.drain('migrate to device');
      for (const r of go) {
        const { next } = r.it.t;
        const rec = recs.get(r.index);
        const perm = next.dev as 'ro' | 'rw';
        // A' holds data the disk lacks beyond the device's own writes: kept from a writable copy;
        // none while A stays uptodate beside it; else whatever A held (dirty or not).
        const diskStale =
          rec?.perm === 'rw' ? rec.diskStale : next.host === 'C' || next.host === 'D' ? false : r.wasDirty;
        const copy: DeviceCopy = { frame: r.frame, perm, diskStale };
        if (r.page && next.host === 'S') {
          folio_clear_uptodate(r.page);
          folio_mark_dirty(r.page);
        }
        if (r.page && has(r, 'device-entry')) {
          // A leaves; the device entry stands in its place (unlocks and frees the page).
          locked.delete(r.page);
          replace_page_cache_entry(r.page, { kind: 'device', index: r.index, token: copy });
          this.movedToDevice(r.index);
        }
        recs.set(r.index, copy);
        ctx.grant(r.index, r.frame, perm);
        out[r.i] = { ok: true, frame: r.frame, perm };
      }
      this.traceItems(
        m,
        go.map((r) => r.it),
      );
    } finally {
      for (const p of locked) unlock_page(p);
      for (const e of lockedEntries) unlock_entry(e);
    }
  }

  /** A page moved to the device in fault service (migrate counts it). */
  protected movedToDevice(_index: number): void {}

  async runDeviceKernel(
    m: AddressSpace,
    kind: KernelKind,
    params: KernelParams,
    sink?: DeviceOutputSink,
  ): Promise<DeviceKernelResult> {
    this.checkUsable(`device ${kind} on ${m.name}`);
    const space = this.space(m);
    this.running++;
    let r: Awaited<ReturnType<DeviceMemory['runKernel']>>;
    try {
      r = await this.dm.runKernel(kind, space, params, this.servicer(m), sink);
    } catch (e) {
      throw this.lossOr(e); // while `running`: a loss counts every device-writable page as written
    } finally {
      this.running--;
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

  /**
   * Prefetch (cudaMemPrefetchAsync; UVM's uvm_migrate to a GPU makes the pages resident and maps
   * them): the pages of [first, last] not mapped with the access asked go through the same fault
   * service as device faults of that access (the table's device-fault rows: mirror copies A -> A'
   * and keeps A; migrate moves the page), a batch at a time, with no kernel. A chunk's worth of
   * pages at a time, so the requests held do not grow with the range.
   */
  async prefetch(m: AddressSpace, first: number, last: number, write: boolean): Promise<DevicePrefetch> {
    this.checkUsable(`device prefetch on ${m.name}`);
    const space = this.space(m);
    const out: DevicePrefetch = {
      pages: last - first + 1,
      serviced: 0,
      granted: 0,
      refused: [],
      batches: 0,
      bytesToDevice: 0,
    };
    const before = this.dm.counters.bytesHostToDevice;
    const window = Math.max(1, Math.floor(this.dm.chunkBytes / this.dm.pageSize));
    for (let lo = first; lo <= last; lo += window) {
      const hi = Math.min(last, lo + window - 1);
      const requests: { index: number; write: boolean }[] = [];
      for (let i = lo; i <= hi; i++) {
        const rec = this.record(m, i);
        if (rec && (rec.perm === 'rw' || !write)) continue; // mapped with the access asked
        requests.push({ index: i, write });
      }
      if (requests.length === 0) continue;
      const r = await this.guarded(() => this.dm.prefetch(space, requests, this.servicer(m)));
      out.serviced += r.pages;
      out.granted += r.granted;
      out.refused.push(...r.refused);
      out.batches += r.batches.length;
    }
    out.bytesToDevice = this.dm.counters.bytesHostToDevice - before;
    return out;
  }

  // ---- the CPU's side: the hooks every scheme answers from its table ----

  async cpuNeedsData(m: AddressSpace, pages: Page[], why: CpuAccess): Promise<void> {
    if (!this.live()) return this.afterLoss();
    const event = CPU_EVENT[why];
    const items = pages.filter((p) => this.record(m, p.index)).map((p) => this.plan(m, p.index, p, event));
    // readpage, page_mkclean, writepage, try_to_unmap and drop-page are the page cache's to do.
    await this.guarded(() =>
      this.pullBack(m, items, ['readpage', 'page_mkclean', 'writepage', 'try_to_unmap', 'drop-page']),
    );
  }

  async cpuWillWrite(m: AddressSpace, pages: Page[], why: CpuWrite): Promise<void> {
    if (!this.live()) return this.afterLoss();
    const event: DeviceEvent = why === 'fault' ? 'cpu-write-fault' : 'cpu-write';
    const items = pages.filter((p) => this.record(m, p.index)).map((p) => this.plan(m, p.index, p, event));
    await this.guarded(() => this.pullBack(m, items, ['readpage'], why === 'fault'));
  }

  reclaimDecision(m: AddressSpace, page: Page): 'free' | 'device-entry' | 'keep' {
    if (this.gone || !this.record(m, page.index)) return 'free';
    const t = this.transition(this.stateOf(m, page.index, page), 'host-reclaim');
    return t.next.host === 'E' ? 'device-entry' : 'free';
  }

  makeDeviceEntry(m: AddressSpace, page: Page): DeviceEntry {
    const rec = this.record(m, page.index);
    if (!rec)
      throw new Error(
        `${this.name}: page ${page.index} of ${m.name} has no device copy to leave an entry for`,
      );
    return { kind: 'device', index: page.index, token: rec };
  }

  /**
   * Writeback of device entries: write-protect every entry A' holds writable (one shootdown),
   * bounce out (one copy) those the device wrote or whose data the disk lacks, and write each; the
   * row's next state (read-only, clean) for each whose write landed. A failed copy or write gives
   * the device back its write permission and DIRTY bit for those pages: they are still to be
   * written back.
   */
  async writebackDeviceEntries(
    m: AddressSpace,
    entries: DeviceEntry[],
    writepage: (index: number, data: Uint8Array) => Promise<void>,
  ): Promise<number> {
    if (!this.live()) {
      await this.afterLoss();
      return 0;
    }
    const items = entries
      .map((e) => ({ index: e.index, rec: this.record(m, e.index) }))
      .filter((x): x is { index: number; rec: DeviceCopy } => x.rec !== undefined)
      .map((x) => ({ ...x, it: this.planEntry(m, x.index, x.rec, 'writeback') }))
      .filter((x) => x.it.t.work.includes('bounce-writeback'));
    if (items.length === 0) return 0;
    this.checkWork(
      items.map((x) => x.it),
      ['device-protect', 'bounce-writeback'],
      [],
    );
    return this.guarded(
      () =>
        this.pinned(
          items.map((x) => x.rec.frame),
          async () => {
            const space = this.space(m);
            const recs = this.records(m);
            const ps = this.dm.pageSize;
            // Write-protect and bounce out in one pull: each entry the device wrote, or whose data the
            // disk lacks, into a bounce page of its own.
            const bounce = new Map(items.map((x) => [x.index, new Uint8Array(ps)]));
            const marked = items.filter((x) => space.dirty.has(x.index));
            for (const x of marked) x.rec.copyBack = true;
            let pulled: PullResult;
            try {
              pulled = await this.dm.pull(space, {
                protect: items.filter((x) => x.it.t.work.includes('device-protect')).map((x) => x.index),
                copies: items.map((x) => ({
                  index: x.index,
                  frame: x.rec.frame,
                  into: bounce.get(x.index)!,
                  always: x.rec.diskStale,
                })),
              });
            } finally {
              for (const x of marked) x.rec.copyBack = false;
            }
            const changes = pulled.changes;
            const wrote = new Map(changes.map((c) => [c.index, c.dirty]));
            const copy = items.filter((x) => pulled.copied.has(x.index));
            const data = copy.map((x) => bounce.get(x.index)!);
            // The written pages' bytes are on their way to the disk until each write lands.
            this.markCopyBack(recs, changes, true);
            this.c.device_copybacks += copy.length;
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
              this.c.device_bounce_writebacks++;
            }
            for (const x of items) {
              if (failed.has(x.index)) continue;
              x.rec.perm = x.it.t.next.dev as 'ro' | 'rw';
              x.rec.diskStale = false;
              x.rec.copyBack = false;
            }
            this.traceItems(
              m,
              items.filter((x) => !failed.has(x.index)).map((x) => x.it),
            );
            // Spared: writable copies the device never wrote (a clean read-only entry needs nothing).
            this.c.device_copybacks_spared += items.filter(
              (x) => wrote.has(x.index) && !copy.includes(x),
            ).length;
            if (failed.size) {
              const back = changes.filter((c) => failed.has(c.index));
              const grants = new Map([...pulled.pending].filter(([i]) => failed.has(i)));
              await this.dm.restore(space, back, grants);
              this.markCopyBack(recs, back, false);
              throw error;
            }
            return copy.length;
          },
        ),
      () => 0,
    );
  }

  async invalidateRange(m: AddressSpace, first: number, last: number, why: InvalidateWhy): Promise<void> {
    const recs = this.copies.get(m.id);
    if (!recs) return;
    if (!this.live()) return this.afterLoss();
    const items: Item[] = [];
    for (const index of [...recs.keys()].sort((a, b) => a - b)) {
      if (index < first || index > last) continue;
      const e = m.i_pages.get(index);
      items.push(this.plan(m, index, e?.kind === 'page' ? e : null, why));
    }
    // try_to_unmap and drop-page are the page cache's (truncate_inode_pages_range); the range was
    // written back before (so bounce-writeback and the rest of the unmount row are done).
    await this.guarded(async () => {
      const revoke = items.filter((it) => it.t.work.includes('device-revoke')).map((it) => it.index);
      await this.revoke(m, revoke);
      // The page cache does the rest of the row (try_to_unmap, drop-page): the device's part here.
      this.traceItems(
        m,
        items.map((it) => ({ ...it, t: { ...it.t, work: it.t.work.filter((w) => w === 'device-revoke') } })),
      );
    });
    // The whole file is gone from the cache (unmount): forget its address space, on the device
    // too (its page table and fault buffer), or every mount would leave a pair of GPU buffers.
    if (first === 0 && last === Number.MAX_SAFE_INTEGER && recs.size === 0) {
      this.copies.delete(m.id);
      this.mappings.delete(m.id);
      this.dm.forget(m.id);
      this.ownSpaces.delete(m.id);
    }
  }

  // ---- the work, phase by phase ----

  /**
   * Bring device data back to host pages and/or take the device's access away, for a batch of
   * pages: the rows' device-protect, copy-back and device-revoke, in three phases (as
   * mm/migrate_device.c: setup, the copy, commit or restore). 1: one shootdown for every page that
   * is write-protected or revoked (a revoke is a protect too); 2: one copy for every copy-back; 3:
   * commit: A uptodate (and dirty where its row says D, or where the data was newer than the disk),
   * records and frames. A copy that fails puts every permission and DIRTY bit back: nothing is lost.
   * `leave`: the rows' work the caller does itself.
   */
  protected async pullBack(m: AddressSpace, items: Item[], leave: Work[], forFault = false): Promise<void> {
    const mine: Work[] = ['device-protect', 'copy-back', 'device-revoke'];
    const todo = items.filter((it) => it.t.work.some((w) => mine.includes(w)));
    this.checkWork(todo, mine, leave);
    if (todo.length === 0) return;
    const space = this.space(m);
    const recs = this.records(m);
    const has = (it: Item, w: Work) => it.t.work.includes(w);
    const revoking = todo.filter((it) => has(it, 'device-revoke'));
    const protecting = todo.filter((it) => has(it, 'device-protect') && !has(it, 'device-revoke'));
    // copy-back: only what the device wrote, unless A is new (E): A's bytes are still valid otherwise.
    const copying = todo.filter((it) => has(it, 'copy-back'));
    // While the bytes are on their way, a loss names the pages the device wrote (as last read back).
    const marked = copying.filter((it) => space.dirty.has(it.index));
    for (const it of marked) recs.get(it.index)!.copyBack = true;
    const frames = todo.map((it) => recs.get(it.index)!.frame);
    for (const f of frames) this.dm.pool.pin(f); // no eviction of them across the awaits below
    let pulled: PullResult;
    try {
      // One PTE update (write-protect or revoke, one shootdown), the copies in the same submit,
      // straight into the host pages (locked, not uptodate: nothing reads them until the commit).
      // The planted bug (src/inject/planted.ts): a CPU fault's revoke never reaches the GPU.
      const plant = forFault && revoking.length > 0 && planted('no-revoke');
      pulled = await this.dm.pull(space, {
        protect: protecting.map((it) => it.index),
        revoke: plant ? [] : revoking.map((it) => it.index),
        copies: copying.map((it) => ({
          index: it.index,
          frame: recs.get(it.index)!.frame,
          into: it.page!.data,
          always: it.state.host === 'E',
        })),
      });
      if (plant) {
        const forgot = this.forgetWithoutRevoke(
          space,
          revoking.map((it) => it.index),
        );
        pulled = { ...pulled, changes: [...pulled.changes, ...forgot] };
      }
    } finally {
      // Landed, or not taken at all (a failed pull puts every permission and DIRTY bit back).
      for (const it of marked) recs.get(it.index)!.copyBack = false;
      for (const f of frames) this.dm.pool.unpin(f);
    }
    const wrote = new Map(pulled.changes.map((ch) => [ch.index, ch.dirty]));
    this.c.device_copybacks += pulled.copied.size;
    this.c.device_copybacks_spared += todo.filter(
      (it) => has(it, 'copy-back') && it.state.host !== 'E' && !wrote.get(it.index),
    ).length;
    for (const it of todo) {
      const { next } = it.t;
      const rec = recs.get(it.index)!;
      if (it.page && (has(it, 'copy-back') || next.host === 'C' || next.host === 'D')) {
        // A holds the data now. Dirty where the row says so or writes it next (unmount), or where
        // A' held data the disk lacks (migrate's record).
        folio_mark_uptodate(it.page);
        const newer = it.state.host === 'E' && (rec.diskStale || wrote.get(it.index) === true);
        if (next.host === 'D' || has(it, 'writepage') || newer) folio_mark_dirty(it.page);
      }
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
    this.traceItems(m, todo);
  }

  /**
   * Run `fn` with `frames` pinned: while it awaits the GPU, device eviction (another mount's fault
   * service, on a device that mounts share) may not take them, so a frame read before an await is
   * still this page's after it.
   */
  protected async pinned<T>(frames: readonly number[], fn: () => Promise<T>): Promise<T> {
    for (const f of frames) this.dm.pool.pin(f);
    try {
      return await fn();
    } finally {
      for (const f of frames) this.dm.pool.unpin(f);
    }
  }

  /**
   * HMMLAB_PLANTED_BUG=no-revoke only: what a revoke does on the host (the device layer's shadow
   * forgets the PTE, the frame leaves the LRU) without the GPU's PTE update and shootdown: the
   * device keeps mapping a frame the policy frees. Tests show that the checks catch it.
   */
  private forgetWithoutRevoke(space: DevicePageTable, indices: number[]): PteChange[] {
    const out: PteChange[] = [];
    space.invalidate(indices);
    for (const index of indices) {
      space.pending.delete(index);
      const e = space.entries.get(index);
      if (!e) continue;
      space.entries.delete(index);
      space.dirty.delete(index);
      this.dm.pool.unlist(e.frame);
      out.push({ index, frame: e.frame, dirty: false, perm: e.perm as 'ro' | 'rw' });
    }
    return out;
  }

  /** Mark the records of the pages whose DIRTY bit `changes` took as on their way back (or not). */
  protected markCopyBack(recs: Map<number, DeviceCopy>, changes: PteChange[], on: boolean): void {
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

  // ---- device eviction ----

  /**
   * Which eviction row a victim meets: `page` is its resident host page, if any (locked). A scheme
   * that moves the page home may allocate one here: `{ event, page }` with the page new and locked.
   */
  protected evictionOf(
    _m: AddressSpace,
    _index: number,
    page: Page | null,
  ): { event: DeviceEvent; page: Page | null; fresh: boolean } {
    return { event: 'device-evict', page, fresh: false };
  }

  /**
   * Device eviction (the device layer revoked the victims' PTEs already), each victim by its row:
   * copy-back to its host page (resident, or new: the page moves home), bounce-writeback to disk
   * (where A is gone), or nothing (a clean copy is dropped). One copy for all the victims that need
   * one, then the host pages (which cannot fail), then the disk. Each host page is changed under its
   * page lock; a victim whose page is locked now, or whose copy or write fails, is kept (the device
   * layer puts it back as it was, and a page allocated for it gives its index back to the entry), so
   * an eviction that fails loses nothing.
   */
  private async evict(victims: EvictedFrame[]): Promise<EvictionOutcome> {
    const work: EvictWork[] = [];
    const kept: EvictedFrame[] = [];
    const locked: Page[] = [];
    const lockedEntries: DeviceEntry[] = [];
    const undo = (ws: EvictWork[]) => {
      for (const w of ws) {
        if (!w.fresh || !w.it.page) continue;
        locked.splice(locked.indexOf(w.it.page), 1);
        replace_page_cache_entry(w.it.page, w.entry ?? { kind: 'device', index: w.v.index, token: w.rec });
      }
      return ws.map((w) => w.v);
    };
    try {
      for (const v of victims) {
        const m = this.mappings.get(v.space);
        const rec = m ? this.record(m, v.index) : undefined;
        if (!m || !rec || rec.frame !== v.frame) continue;
        const e = m.i_pages.get(v.index);
        let page = e?.kind === 'page' ? e : null;
        if (page) {
          if (!trylock_page(page)) {
            kept.push(v); // busy: another victim will do
            continue;
          }
          locked.push(page);
        } else if (e?.kind === 'device') {
          // A device entry is busy too while another path holds it (writeback, a bounce, readpage).
          if (!trylock_entry(m, e)) {
            kept.push(v);
            continue;
          }
          lockedEntries.push(e);
        }
        const state = this.stateOf(m, v.index, page);
        const how = this.evictionOf(m, v.index, page);
        if (how.fresh && how.page) locked.push(how.page);
        page = how.page;
        const it = this.plan(m, v.index, page, how.event, state);
        this.checkWork(
          [it],
          ['alloc-page', 'device-protect', 'copy-back', 'bounce-writeback', 'device-revoke'],
          [],
        );
        if (v.dirty) rec.copyBack = true; // the DIRTY bit went with the revoke
        const copy =
          (it.t.work.includes('copy-back') && (v.dirty || state.host === 'E')) ||
          (it.t.work.includes('bounce-writeback') && (v.dirty || rec.diskStale));
        work.push({ m, v, it, rec, copy, fresh: how.fresh, entry: e?.kind === 'device' ? e : undefined });
      }
      const copies = work.filter((w) => w.copy);
      let data: Uint8Array[] = [];
      try {
        if (copies.length) data = await this.dm.copyFromFrames(copies.map((w) => w.v.frame));
      } catch (error) {
        for (const w of work) w.rec.copyBack = false;
        return { kept: [...kept, ...undo(work)], error };
      }
      const bytes = new Map(copies.map((w, k) => [w, data[k]]));
      this.c.device_copybacks += copies.length;
      const done = (w: EvictWork) => {
        this.records(w.m).delete(w.v.index);
        this.c.device_evictions++;
        if (w.v.dirty) this.c.device_evictions_dirty++;
        this.traceItems(w.m, [w.it]);
      };
      // Host pages first (nothing there can fail), then the disk.
      for (const w of work.filter((x) => x.it.t.work.includes('copy-back'))) {
        const page = w.it.page!;
        const b = bytes.get(w);
        if (b) page.data.set(b);
        else this.c.device_copybacks_spared++;
        folio_mark_uptodate(page);
        if (w.it.t.next.host === 'D' || w.v.dirty || w.rec.diskStale) folio_mark_dirty(page);
        if (w.fresh) this.movedHome(w.v.index);
        done(w);
      }
      const toDisk = work.filter((x) => !x.it.t.work.includes('copy-back'));
      for (const [n, w] of toDisk.entries()) {
        const b = bytes.get(w);
        if (b) {
          try {
            await writepage_bounce(w.m, w.v.index, b);
          } catch (error) {
            for (const x of toDisk.slice(n)) x.rec.copyBack = false;
            return { kept: [...kept, ...toDisk.slice(n).map((x) => x.v)], error };
          }
          this.c.device_bounce_writebacks++;
        }
        if (w.m.i_pages.get(w.v.index)?.kind === 'device') w.m.i_pages.delete(w.v.index);
        done(w);
      }
      return { kept };
    } finally {
      for (const p of locked) unlock_page(p);
      for (const e of lockedEntries) unlock_entry(e);
    }
  }

  /** A device entry moved home by eviction (migrate counts it). */
  protected movedHome(_index: number): void {}

  // ---- detach and loss ----

  /**
   * Orderly detach (device hot-unplug): every page the device holds is copied back (to its host
   * page, or to disk where A is gone), every device PTE revoked. Device ops fail with ENODEV
   * afterwards; the file's data is all on the host side.
   */
  detach(): Promise<void> {
    return this.serialize(async () => {
      if (this.gone) return;
      await this.guarded(async () => {
        await this.dm.detach();
      });
      // Every frame came back: the address spaces (page tables, fault buffers) go too.
      for (const id of this.copies.keys()) {
        if (!this.dm.gpu.lost) this.dm.forget(id);
        this.ownSpaces.delete(id);
      }
      this.copies.clear();
      this.gone = 'detached';
    });
  }

  /** Device ops are possible (not detached, not lost); else ENODEV, or the loss's EIO first. */
  protected checkUsable(what: string): void {
    if (!this.gone && this.dm.gpu.lost) {
      const err = this.onLoss();
      if (err) throw err;
    }
    if (this.gone) throw new HmmlabError('ENODEV', `${what}: no device: ${this.gone}`);
  }

  /** Whether the device can serve the mount now; false once it is gone (the loss is reported first). */
  protected live(): boolean {
    return !this.gone && !this.dm.gpu.lost;
  }

  /** Called by a hook that found the device gone: report a loss not reported yet. */
  protected async afterLoss(): Promise<void> {
    if (!this.gone && this.dm.gpu.lost) {
      const err = this.onLoss();
      if (err) throw err;
    }
  }

  /** Run device work; a loss on the way becomes the loss's EIO (or the fallback when nothing was lost). */
  protected async guarded<T>(fn: () => Promise<T>, fallback?: () => T): Promise<T> {
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
    for (const [id, recs] of this.copies) {
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
        const wrote = rec.copyBack === true || (rec.perm === 'rw' && (this.running > 0 || dirty.has(index)));
        if (e?.kind === 'device') {
          if (wrote || rec.diskStale) gone.push(index);
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
    this.copies.clear();
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
    return [...(this.copies.get(m.id)?.keys() ?? [])].sort((a, b) => a - b);
  }

  /** The device layer's own view of a page (its PTE shadow), for the invariant checker. */
  installedPte(m: AddressSpace, index: number): { frame: number; perm: string } | undefined {
    if (this.gone || !this.copies.has(m.id)) return undefined;
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
  checkView(): DeviceCheckView {
    return {
      memory: this.dm,
      record: (m: AddressSpace, index: number) => this.record(m, index),
      ownsSpace: (id: number) => this.ownSpaces.has(id),
    };
  }
}
