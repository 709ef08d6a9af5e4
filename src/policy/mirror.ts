/**
 * Jan Kara's mirror scheme (LSF/MM 2016) on a real GPU: the page-cache page A stays where it is and
 * the device gets a copy A' in one of its frames. The rules are the table's (mirrorTable.ts); what
 * every device policy shares (records, fault service, copy-backs, writeback of device entries,
 * eviction, detach and loss, counters) is the core's (core.ts). What is left here is the mirror's
 * own: readpage of a device entry pulls the page back (E -> C or D, A' stays, read-only), and a
 * readpage of a read-only entry brings its read-only neighbours back in the same copy.
 */
import type { DeviceMemory } from '../device/index.ts';
import { type AddressSpace, type DeviceEntry, folio_mark_uptodate, type Page } from '../mm/index.ts';
import { DEVICE_COUNTERS, type DeviceCopy, DevicePolicyCore, type Item } from './core.ts';
import { fmt, MIRROR_TABLE } from './mirrorTable.ts';

/** The counters the mirror policy adds to fs.vmstat(): the device policies' shared names. */
export const MIRROR_COUNTERS = DEVICE_COUNTERS;
export type MirrorCounter = (typeof MIRROR_COUNTERS)[number];

/** Device readahead for E pages: at most this many pages, and bytes, in one copy back. */
const PULL_AHEAD_PAGES = 16;
const PULL_AHEAD_BYTES = 1 << 20;

export class MirrorPolicy extends DevicePolicyCore {
  readonly name = 'mirror';
  readonly table = MIRROR_TABLE;
  /** Bytes of read-only device entries copied back ahead of their readpage (see pullAhead). */
  private readonly readAhead = new WeakMap<DeviceCopy, Uint8Array>();

  constructor(dm: DeviceMemory) {
    super(dm);
  }

  async readpageFromDevice(m: AddressSpace, entry: DeviceEntry, page: Page): Promise<boolean> {
    const rec = this.record(m, entry.index);
    if (!this.live() || !rec) {
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
        await this.pullBack(m, [it], ['alloc-page']);
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
    const have = entries.map((e) => this.live() && this.record(m, e.index) !== undefined);
    if (!this.live()) await this.afterLoss();
    const items: Item[] = [];
    for (const [k, e] of entries.entries()) {
      const rec = have[k] ? this.record(m, e.index) : undefined;
      if (rec)
        items.push(this.plan(m, e.index, pages[k], 'cpu-read', { host: 'E', dev: rec.perm, cpu: '-' }));
    }
    if (items.length === 0) return have;
    return this.guarded(
      async () => {
        await this.pullBack(m, items, ['alloc-page']);
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
  private async pullAhead(m: AddressSpace, it: Item, rec: DeviceCopy): Promise<boolean> {
    let data = this.readAhead.get(rec);
    if (data) {
      this.readAhead.delete(rec);
    } else {
      const window = Math.max(1, Math.min(PULL_AHEAD_PAGES, Math.floor(PULL_AHEAD_BYTES / m.pageSize)));
      const ahead: DeviceCopy[] = [];
      for (let i = it.index + 1; i < it.index + window; i++) {
        const r = this.record(m, i);
        if (m.i_pages.get(i)?.kind !== 'device' || r?.perm !== 'ro' || this.readAhead.has(r)) break;
        ahead.push(r);
      }
      const bytes = await this.dm.copyFromFrames([rec.frame, ...ahead.map((r) => r.frame)]);
      this.c.device_copybacks += bytes.length; // every page copied, the ones kept ahead included
      data = bytes[0];
      for (const [k, r] of ahead.entries()) this.readAhead.set(r, bytes[k + 1]);
    }
    if (!it.t.work.includes('copy-back') || it.t.next.host !== 'C')
      throw new Error(`mirror: E ro readpage is not a plain copy-back (${fmt(it.state)})`);
    it.page!.data.set(data);
    folio_mark_uptodate(it.page!);
    this.c.device_pulls++;
    this.traceItems(m, [it]);
    return true;
  }
}
