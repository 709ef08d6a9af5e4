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
  type DeviceMemory,
  type DevicePageTable,
  type EvictedFrame,
  type FaultResolution,
  type FaultServicer,
  type FrameWrite,
  formatPages,
  type KernelKind,
  type KernelParams,
} from '../device/index.ts';
import { HmmlabError, isHmmlabError } from '../errors.ts';
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

  constructor(readonly dm: DeviceMemory) {
    dm.setEvictionHook((victims) => this.evict(victims));
  }

  setSerializer(serialize: Serialize): void {
    this.serialize = serialize;
  }

  // ---- state ----

  private records(m: AddressSpace): Map<number, Mirror> {
    let r = this.mirrors.get(m.id);
    if (!r) {
      r = new Map();
      this.mirrors.set(m.id, r);
      this.mappings.set(m.id, m);
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

  /** The FaultServicer for `m`'s device address space (dm.runKernel calls it a batch at a time). */
  private servicer(m: AddressSpace): FaultServicer {
    return async (faults, ctx) => {
      const seq = ctx.space.readBegin();
      const out: FaultResolution[] = faults.map(() => ({ ok: false, retry: true }));
      const recs = this.records(m);
      // Frames for the pages the device has no copy of, in one allocation (it may evict others).
      const fresh = faults.filter((f) => !recs.has(f.index));
      const frames = await ctx.allocFrames(fresh.map((f) => f.index));
      const frameOf = new Map(fresh.map((f, i) => [f.index, frames[i]]));
      const step = batchPages(asMapping(m).host);
      for (let k = 0; k < faults.length; k += step) {
        const locked: Page[] = [];
        const copies: FrameWrite[] = [];
        try {
          for (let i = k; i < Math.min(k + step, faults.length); i++) {
            const f = faults[i];
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
              if (!FAULT_WORK.has(w))
                throw new Error(`mirror: fault service cannot do ${w} (${fmt(it.state)})`);
            }
            const wasDirty = page ? PageDirty(page) : (rec?.diskStale ?? false);
            if (it.t.work.includes('page_mkwrite')) {
              this.c.device_mkwrite++;
              try {
                await page_mkwrite(m, f.index);
              } catch (err) {
                if (!isHmmlabError(err) || (err.code !== 'ENOSPC' && err.code !== 'EROFS')) throw err;
                this.c.device_mkwrite_refused++;
                out[i] = { ok: false, code: 'EFAULT', message: `page_mkwrite: ${err.code}: ${err.message}` };
                continue;
              }
            }
            // mmu_interval_read_retry: an invalidation of this page since service began wins.
            if (ctx.space.readRetry(seq, [f.index]).size) continue;
            if (page && it.t.work.includes('page_mkclean')) page_mkclean(page);
            if (page && it.t.work.includes('try_to_unmap')) try_to_unmap(page);
            if (page && it.t.work.includes('copy-to-device')) copies.push({ frame, data: page.data });
            if (page && it.t.next.host === 'S') {
              folio_clear_uptodate(page);
              folio_mark_dirty(page);
            }
            const perm = it.t.next.dev as 'ro' | 'rw';
            const diskStale = perm === 'rw' && (rec?.perm === 'rw' ? rec.diskStale : wasDirty);
            recs.set(f.index, { frame, perm, diskStale });
            out[i] = { ok: true, frame, perm };
          }
          if (copies.length) {
            this.dm.copyToFrames(copies); // one writeBuffer per run of frames; data copied at the call
            this.c.device_copies_to_device += copies.length;
          }
        } finally {
          for (const p of locked) unlock_page(p);
        }
      }
      return out;
    };
  }

  async runDeviceKernel(
    m: AddressSpace,
    kind: KernelKind,
    params: KernelParams,
  ): Promise<DeviceKernelResult> {
    this.checkUsable(`device ${kind} on ${m.name}`);
    const space = this.space(m);
    this.running = true;
    let r: Awaited<ReturnType<DeviceMemory['runKernel']>>;
    try {
      r = await this.dm.runKernel(kind, space, params, this.servicer(m));
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

  async writebackDeviceEntry(m: AddressSpace, entry: DeviceEntry): Promise<Uint8Array | null> {
    return (await this.writebackDeviceEntries(m, [entry]))[0];
  }

  /**
   * Writeback of device entries: write-protect every E page A' holds writable (one shootdown),
   * bounce out (one copy) those the device wrote or whose data the disk lacks; E rw -> E ro.
   */
  async writebackDeviceEntries(m: AddressSpace, entries: DeviceEntry[]): Promise<(Uint8Array | null)[]> {
    const out: (Uint8Array | null)[] = entries.map(() => null);
    if (!this.live(m)) {
      await this.afterLoss();
      return out;
    }
    const items = entries
      .map((e, k) => ({ k, rec: this.record(m, e.index), index: e.index }))
      .filter((x) => x.rec)
      .map((x) => ({
        ...x,
        rec: x.rec!,
        it: this.plan(m, x.index, null, 'writeback', { host: 'E', dev: x.rec!.perm, cpu: '-' }),
      }))
      .filter((x) => x.it.t.work.includes('bounce-writeback'));
    if (items.length === 0) return out;
    return this.guarded(
      async () => {
        const changes = await this.dm.protect(
          this.space(m),
          items.map((x) => x.index),
          { cleanDirty: true },
        );
        const wrote = new Map(changes.map((c) => [c.index, c.dirty]));
        const copy = items.filter((x) => wrote.get(x.index) || x.rec.diskStale);
        this.c.device_copybacks_spared += items.length - copy.length;
        for (const x of items) {
          x.rec.perm = 'ro';
          x.rec.diskStale = false;
        }
        if (copy.length === 0) return out;
        const data = await this.dm.copyFromFrames(copy.map((x) => x.rec.frame));
        copy.forEach((x, i) => {
          out[x.k] = data[i];
        });
        this.c.device_copybacks += copy.length;
        this.c.device_bounce_writebacks += copy.length;
        return out;
      },
      () => out,
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
    if (protecting.length) {
      const changes = await this.dm.protect(
        space,
        protecting.map((it) => it.index),
        { cleanDirty: true },
      );
      for (const ch of changes) wrote.set(ch.index, ch.dirty);
    }
    if (revoking.length) {
      const changes = await this.dm.revoke(
        space,
        revoking.map((it) => it.index),
      );
      for (const ch of changes) wrote.set(ch.index, ch.dirty);
    }
    // copy-back: only what the device wrote, unless A is new (E): A's bytes are still valid otherwise.
    const copy = todo.filter((it) => has(it, 'copy-back') && (it.state.host === 'E' || wrote.get(it.index)));
    this.c.device_copybacks_spared += todo.filter(
      (it) => has(it, 'copy-back') && it.state.host !== 'E' && !wrote.get(it.index),
    ).length;
    if (copy.length) {
      const data = await this.dm.copyFromFrames(copy.map((it) => recs.get(it.index)!.frame));
      copy.forEach((it, i) => {
        it.page!.data.set(data[i]);
      });
      this.c.device_copybacks += copy.length;
    }
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
   * clean one is dropped. One copy for all the victims that need one.
   */
  private async evict(victims: EvictedFrame[]): Promise<void> {
    const work: { m: AddressSpace; v: EvictedFrame; it: Item; rec: Mirror; copy: boolean }[] = [];
    for (const v of victims) {
      const m = this.mappings.get(v.space);
      const rec = m ? this.record(m, v.index) : undefined;
      if (!m || !rec || rec.frame !== v.frame) continue;
      const e = m.i_pages.get(v.index);
      const it = this.plan(m, v.index, e?.kind === 'page' ? e : null, 'device-evict');
      const copy =
        (it.t.work.includes('copy-back') && v.dirty) ||
        (it.t.work.includes('bounce-writeback') && (v.dirty || rec.diskStale));
      if (it.t.work.includes('copy-back') && !v.dirty) this.c.device_copybacks_spared++;
      work.push({ m, v, it, rec, copy });
    }
    const copies = work.filter((w) => w.copy);
    const data = copies.length ? await this.dm.copyFromFrames(copies.map((w) => w.v.frame)) : [];
    let k = 0;
    for (const w of work) {
      const { m, v, it } = w;
      const bytes = w.copy ? data[k++] : null;
      if (it.state.host === 'E') {
        if (bytes) {
          await writepage_bounce(m, v.index, bytes);
          this.c.device_bounce_writebacks++;
        }
        if (m.i_pages.get(v.index)?.kind === 'device') m.i_pages.delete(v.index);
      } else if (it.page && it.t.work.includes('copy-back')) {
        if (bytes) it.page.data.set(bytes);
        folio_mark_uptodate(it.page);
        folio_mark_dirty(it.page);
      }
      if (bytes) this.c.device_copybacks++;
      this.records(m).delete(v.index);
      this.c.device_evictions++;
      if (v.dirty) this.c.device_evictions_dirty++;
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
   * The device is gone without a detach. Pages whose newest data was on it are lost: their host
   * pages are no longer dirty and are read from disk again; pages the device could not have
   * written keep A's data (an S page whose DIRTY bit was clear is D again). Device entries leave
   * the index. Returns EIO naming the lost pages, or null when nothing dirty was lost.
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
        const wrote = rec.perm === 'rw' && (this.running || dirty.has(index));
        if (e?.kind === 'device') {
          if (wrote || (rec.perm === 'rw' && rec.diskStale)) gone.push(index);
          m.i_pages.delete(index);
        } else if (e && rec.perm === 'rw' && PageDirty(e) && !PageUptodate(e)) {
          if (wrote) {
            gone.push(index);
            folio_clear_dirty(e); // not uptodate, not dirty: the next access reads the disk
          } else {
            folio_mark_uptodate(e); // the device never wrote it: A's bytes are the data
          }
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
    return { memory: this.dm, record: (m: AddressSpace, index: number) => this.record(m, index) };
  }
}
