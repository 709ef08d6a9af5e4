/**
 * Jérôme Glisse's migrate scheme (LSF/MM 2016) on a real GPU: the page moves. A device fault (read
 * or write: a write calls page_mkwrite first) copies A to A' and frees A at once, a device entry
 * standing in the page-cache index, so a dataset used only by the GPU holds no host memory. read(2)
 * and write(2) of a device-held page go through a bounce page (this file's bounceRead, bounceWrite:
 * A is not allocated and the page stays on the device); an mmap fault migrates it back
 * (readpageFromDevice: dev_pagemap_ops.migrate_to_ram); device eviction migrates it back too, or
 * writes it to disk and drops it when the host has no free page. Writeback, truncate, direct I/O,
 * unmount, detach and loss are the core's (core.ts), driven by the migrate table (migrateTable.ts).
 *
 * Every move is done in mm/migrate_device.c's three phases, with a restore path for each page:
 *   to the device (core.ts serviceStep): collect and lock the pages, readpage and page_mkwrite,
 *     unmap the CPU (migrate_vma_setup); copy A -> A' (the driver's copy); then the commit, A freed
 *     and the entry installed (migrate_vma_pages + finalize). Nothing before the commit is undone
 *     but the unmap, which only makes the CPU fault again.
 *   back to RAM (core.ts pullBack): A allocated; A' unmapped from the device (setup); copy A' -> A;
 *     commit (A uptodate, dirty when A' was newer than the disk; the frame freed) or restore (the
 *     device PTE put back with its DIRTY bit, the entry back in A's place).
 *   bounce read/write: one copy; a failure changes nothing.
 */

import { type DeviceMemory, pendingOf } from '../device/index.ts';
import { type AddressSpace, type DeviceEntry, type Page, page_cache_alloc_nowait } from '../mm/index.ts';
import { trace_begin } from '../mm/trace.ts';
import { type DeviceCopy, DevicePolicyCore } from './core.ts';
import { MIGRATE_TABLE } from './migrateTable.ts';
import type { BounceWrite } from './policy.ts';
import type { DeviceEvent, Work } from './scheme.ts';

/** The counters migrate adds to the device policies' shared ones. */
export const MIGRATE_COUNTERS = [
  'device_migrations_to_device', // pages moved A -> A' (A freed)
  'device_migrations_to_ram', // pages moved back A' -> A (A' freed): mmap faults, eviction
  'device_bounce_reads', // pages read through a bounce page (read(2), and the rest of a partial write)
  'device_bounce_writes', // pages written through a bounce page (write(2), truncate's zeroing)
] as const;

export class MigratePolicy extends DevicePolicyCore {
  readonly name = 'migrate';
  readonly table = MIGRATE_TABLE;

  constructor(dm: DeviceMemory) {
    super(dm, MIGRATE_COUNTERS);
  }

  protected override movedToDevice(): void {
    this.c.device_migrations_to_device++;
  }

  protected override movedHome(): void {
    this.c.device_migrations_to_ram++;
  }

  /**
   * migrate_to_ram: an mmap fault on a device entry (the page cache allocated A, locked, empty).
   * A' is unmapped, copied into A and freed; on a failure it is put back and the entry stays.
   */
  async readpageFromDevice(m: AddressSpace, entry: DeviceEntry, page: Page): Promise<boolean> {
    const rec = this.record(m, entry.index);
    if (!this.live() || !rec) {
      await this.afterLoss();
      return false;
    }
    const it = this.plan(m, entry.index, page, 'cpu-read-fault', { host: 'E', dev: rec.perm, cpu: '-' });
    return this.guarded(
      async () => {
        await this.pullBack(m, [it], ['alloc-page'], true);
        this.c.device_pulls++;
        this.c.device_migrations_to_ram++;
        return true;
      },
      () => false,
    );
  }

  /** read(2) of device entries: their pages through one bounce copy; null where the device no longer has one. */
  async bounceRead(m: AddressSpace, entries: DeviceEntry[]): Promise<(Uint8Array | null)[]> {
    const none = () => entries.map(() => null);
    if (!this.live()) {
      await this.afterLoss();
      return none();
    }
    const held = this.held(m, entries, 'cpu-read');
    if (held.length === 0) return none();
    return this.guarded(async () => {
      const tr = trace_begin(
        m,
        held.map((h) => entries[h.k].index),
      );
      const data = await this.dm.copyFromFrames(held.map((h) => h.rec.frame));
      this.c.device_bounce_reads += held.length;
      tr?.end('cpu-read', ['bounce-read']);
      const out: (Uint8Array | null)[] = none();
      held.forEach((h, k) => {
        out[h.k] = data[k];
      });
      return out;
    }, none);
  }

  /**
   * write(2) (or truncate's zeroing) of device entries: A' is write-protected first where the
   * device may write it (the row's device-protect: a kernel's stores must not land between the
   * bounce's read and its write, nor after the bytes and under them), a page written in part is
   * read through the bounce page (one copy), the new page images go to the device (one copy), and
   * each A' is then newer than the disk. false where the device no longer holds the page. A failed
   * copy gives back the write permission and DIRTY bit it took: nothing changed.
   */
  async bounceWrite(m: AddressSpace, writes: BounceWrite[]): Promise<boolean[]> {
    const none = () => writes.map(() => false);
    if (!this.live()) {
      await this.afterLoss();
      return none();
    }
    const ps = m.pageSize;
    const held = this.held(
      m,
      writes.map((w) => w.entry),
      'cpu-write',
    );
    if (held.length === 0) return none();
    const partial = held.filter((h) => writes[h.k].offset > 0 || writes[h.k].bytes.length < ps);
    // The read half of a partial write is the cpu-read row (the page cache asks it for A the same way).
    this.held(
      m,
      partial.map((h) => writes[h.k].entry),
      'cpu-read',
    );
    const protect = held.filter((h) => h.work.includes('device-protect'));
    return this.guarded(
      () =>
        this.pinned(
          held.map((h) => h.rec.frame),
          async () => {
            const space = this.space(m);
            const tr = trace_begin(
              m,
              held.map((h) => writes[h.k].entry.index),
            );
            // Grants not installed yet that the write-protect narrows: put back if the bounce fails.
            const grants = pendingOf(
              space,
              protect.map((h) => writes[h.k].entry.index),
            );
            const taken = protect.length
              ? await this.dm.protect(
                  space,
                  protect.map((h) => writes[h.k].entry.index),
                  { cleanDirty: true },
                )
              : [];
            try {
              const old = partial.length ? await this.dm.copyFromFrames(partial.map((h) => h.rec.frame)) : [];
              this.c.device_bounce_reads += partial.length;
              const images = new Map(partial.map((h, k) => [h.k, old[k]]));
              const items = held.map((h) => {
                const w = writes[h.k];
                const page = images.get(h.k) ?? new Uint8Array(ps);
                page.set(w.bytes, w.offset);
                return { frame: h.rec.frame, data: page };
              });
              await this.dm.copyToFrames(items);
            } catch (e) {
              if (taken.length || grants.size) await this.dm.restore(space, taken, grants);
              throw e;
            }
            this.c.device_bounce_writes += held.length;
            const out = none();
            for (const h of held) {
              h.rec.diskStale = true; // the device's own writes are in A' too: newer than the disk
              if (h.work.includes('device-protect')) h.rec.perm = 'ro';
              out[h.k] = true;
            }
            const read = new Set(partial.map((h) => writes[h.k].entry.index));
            tr?.end('cpu-write', (i) => (read.has(i) ? ['bounce-read', 'bounce-write'] : ['bounce-write']));
            return out;
          },
        ),
      none,
    );
  }

  /** The entries the device holds, each checked against its row for `event`: a bounce (and a protect). */
  private held(m: AddressSpace, entries: DeviceEntry[], event: DeviceEvent) {
    const out: { k: number; rec: DeviceCopy; work: readonly Work[] }[] = [];
    entries.forEach((e, k) => {
      const rec = this.record(m, e.index);
      if (!rec || m.i_pages.get(e.index) !== e) return;
      const it = this.planEntry(m, e.index, rec, event);
      this.checkWork([it], event === 'cpu-write' ? ['device-protect', 'bounce-write'] : ['bounce-read'], []);
      out.push({ k, rec, work: it.t.work });
    });
    return out;
  }

  /** Eviction moves the page home when a host page is free (no reclaim for it), else to disk. */
  protected override evictionOf(m: AddressSpace, index: number, page: Page | null) {
    if (page) return { event: 'device-evict' as const, page, fresh: false };
    const home = page_cache_alloc_nowait(m, index);
    if (home) return { event: 'device-evict' as const, page: home, fresh: true };
    return { event: 'device-evict-host-full' as const, page: null, fresh: false };
  }
}
