/**
 * The invariants of docs/DESIGN.md, checked over a whole mount between two ops. Tests, `hmmlab
 * replay --check` and `hmmlab stress` run it after every op, after a failed op too: an op that
 * fails must leave a legal state, so nothing here assumes the last op succeeded.
 *
 * Host side, every open file:
 *   - a cached page sits at its own index, is not PG_locked and not under writeback;
 *   - a page is on the LRU (PG_lru) iff it is in an index; every pool slot in use is a cached page;
 *   - mapcount is the number of CPU PTEs that map the page, and every present CPU PTE maps the
 *     page cached at its index.
 * Page states: single writer; every page in a legal state of the policy's own scheme (its table:
 * mirrorTable.ts, migrateTable.ts; a host-only mount: pages with no device copy); a device entry has
 * a device copy.
 * Device side (a policy with checkView, while the GPU lives), read back from the GPU itself:
 *   - every device address space belongs to an open file;
 *   - every PTE word of every page table (its whole capacity): no FAIL bit left (a refusal holds for
 *     one kernel run only), no DIRTY on a read-only or empty PTE (write-protect clears it once the
 *     data is copied back);
 *   - no two PTEs on one frame; a PTE for every record and a record for every PTE, with the same
 *     frame and permission, and the device layer's host shadow agrees; a mapped frame's owner
 *     (FramePool.owner, the device rmap) is that page; an owned frame is mapped; owned + free = all;
 *   - every read-only device copy equals its data byte for byte: A where A is resident and uptodate
 *     (C, D), the disk for a device entry (E) whose data the disk holds; a read-only entry newer
 *     than the disk is legal only in a scheme whose writeback bounces it (migrate's table says so).
 * No stale read, no lost data and durability are the reference model's to check (replay --check).
 * A broken invariant is HmmlabError('EIO') naming the file, the page and the invariant.
 *
 * Cost: one readback per device page table and one batched copy of the read-only frames. Both go
 * around DeviceMemory's counted copy path, so `--check --stats` counts only what the ops did.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { frameCopier } from '../device/copy.ts';
import type { DevicePageState, DevicePageTable, DevicePerm } from '../device/index.ts';
import { HmmlabError } from '../errors.ts';
import { BackingFile } from '../fs/backing.ts';
import type { HmmFs } from '../fs/hmmfs.ts';
import type { Mapping } from '../mm/mapping.ts';
import { pte_none, pte_slot } from '../mm/pte.ts';
import { page_cpu_access } from '../mm/rmap.ts';
import { host_state } from '../mm/snapshot.ts';
import { PG_locked, PG_lru, PG_uptodate, PG_writeback } from '../mm/types.ts';
import { type DeviceCheckView, type DevicePolicy, isDevicePolicy } from './device.ts';
import type { CoherencePolicy } from './policy.ts';
import { fmt, type PageState } from './scheme.ts';

function broken(m: { name: string }, index: number, what: string): HmmlabError {
  return new HmmlabError('EIO', `invariant broken: ${m.name} page ${index}: ${what}`);
}

function brokenIn(where: string, what: string): HmmlabError {
  return new HmmlabError('EIO', `invariant broken: ${where}: ${what}`);
}

/** Check every invariant of the mount `fs`; throws the first broken one. */
export function checkInvariants(fs: HmmFs): Promise<void> {
  // The mount held exclusive: no operation is halfway through while we look (CPU threads' loads
  // and stores go on, but change no state; their faults wait).
  return fs.exclusive('check invariants', async () => {
    const mappings = fs.openMappings;
    checkHostPages(fs, mappings);
    const policy = fs.policy;
    for (const m of mappings) checkPageStates(policy, m);
    if (!isDevicePolicy(policy)) return;
    const view = policy.checkView?.();
    if (view && !view.memory.gpu.lost) await checkDevice(policy, view, mappings);
  });
}

// ---- host pages ----

function checkHostPages(fs: HmmFs, mappings: Mapping[]): void {
  const host = fs.pageCache;
  let cached = 0;
  for (const m of mappings) {
    const mapped = cpuMappings(m);
    for (const [index, e] of m.i_pages) {
      if (e.kind !== 'page') continue;
      cached++;
      if (e.mapping !== m || e.index !== index)
        throw broken(m, index, `the index holds page ${e.index} of ${e.mapping.name}`);
      if (e.flags & PG_locked)
        throw broken(m, index, 'PG_locked is set between ops: a path did not unlock_page');
      if (e.flags & PG_writeback)
        throw broken(m, index, 'PG_writeback is set between ops: writeback never ended');
      if (!host.lru.has(e) || !(e.flags & PG_lru)) {
        const why = host.lru.has(e) ? 'PG_lru is clear' : 'the LRU does not hold it';
        throw broken(m, index, `in the page cache but not on the LRU (${why}): reclaim can never free it`);
      }
      const n = mapped.get(index) ?? 0;
      if (e.mapcount !== n) throw broken(m, index, `mapcount is ${e.mapcount}, but ${n} CPU PTE(s) map it`);
    }
  }
  const open = new Set(mappings);
  for (const p of host.lru) {
    const m = p.mapping as Mapping;
    if (!open.has(m) || m.i_pages.get(p.index) !== p)
      throw broken(
        m,
        p.index,
        'on the LRU but not in the page cache: it was freed or replaced behind the LRU',
      );
  }
  const used = host.pool.nrPages - host.pool.nrFree;
  if (used !== cached)
    throw brokenIn(
      'host page pool',
      `${used} slots in use but ${cached} pages cached: a slot was leaked or freed twice`,
    );
}

/** Index -> how many CPU PTEs map the page cached there; a PTE that maps anything else is broken. */
function cpuMappings(m: Mapping): Map<number, number> {
  const n = new Map<number, number>();
  for (const vma of m.i_mmap) {
    // A VmArea spans the largest file (262,144 PTEs at 4 KiB, mostly empty): memcmp skips the empty
    // stretches; plain loads are enough between ops, when no thread changes a PTE.
    const ptes = vma.pte;
    for (let first = 0; first < ptes.length; first += PTE_CHUNK) {
      const count = Math.min(PTE_CHUNK, ptes.length - first);
      const bytes = Buffer.from(ptes.buffer, ptes.byteOffset + first * 4, count * 4);
      if (bytes.equals(NO_PTES.subarray(0, count * 4))) continue;
      for (let index = first; index < first + count; index++) {
        const pte = ptes[index];
        if (pte_none(pte)) continue;
        const e = m.i_pages.get(index);
        if (e?.kind !== 'page' || e.slot !== pte_slot(pte))
          throw broken(
            m,
            index,
            `a CPU PTE maps host slot ${pte_slot(pte)}, which is not the page cached here`,
          );
        n.set(index, (n.get(index) ?? 0) + 1);
      }
    }
  }
  return n;
}

const PTE_CHUNK = 4096;
const NO_PTES = new Uint8Array(PTE_CHUNK * 4);

// ---- page states ----

function checkPageStates(policy: CoherencePolicy, m: Mapping): void {
  const device = isDevicePolicy(policy) ? policy : null;
  const legal = device ? (s: PageState) => device.table.isLegal(s) : (s: PageState) => s.dev === '-';
  const indices = new Set<number>([...m.i_pages.keys(), ...(device?.deviceIndices(m) ?? [])]);
  for (const index of [...indices].sort((a, b) => a - b)) {
    const e = m.i_pages.get(index);
    const dev = device ? device.devicePage(m, index) : { dev: '-' as const, frame: null };
    const page = e?.kind === 'page' ? e : null;
    const cpu = page ? page_cpu_access(page) : '-';
    const s: PageState = {
      host: e?.kind === 'device' ? 'E' : host_state(page ?? undefined),
      dev: dev.dev,
      cpu,
    };
    if (dev.dev === 'rw' && cpu !== '-')
      throw broken(m, index, `single writer: the device may write it and a CPU PTE maps it ${cpu}`);
    if (dev.dev === 'rw' && page && page.flags & PG_uptodate)
      throw broken(m, index, 'single writer: the device may write it and A is uptodate');
    if (cpu === 'rw' && dev.dev !== '-')
      throw broken(m, index, `single writer: a CPU PTE may write it and the device has ${dev.dev} access`);
    if (e?.kind === 'device' && dev.frame === null)
      throw broken(m, index, 'a device entry stands in the index and the device holds no frame for it');
    if (!legal(s)) throw broken(m, index, `illegal state ${fmt(s)}`);
  }
}

// ---- the device: page tables, frames, copies ----

interface Table {
  space: DevicePageTable;
  m: Mapping;
  /** Every PTE of the table that is not empty, as the GPU holds it, by page index. */
  rows: Map<number, DevicePageState>;
}

const NO_PTE: Pick<DevicePageState, 'perm' | 'frame'> = { perm: 'none', frame: null };

const describePte = (p: { perm: DevicePerm; frame: number | null } | undefined): string =>
  !p || p.perm === 'none' ? 'no PTE' : `${p.perm} frame ${p.frame}`;

async function checkDevice(policy: DevicePolicy, view: DeviceCheckView, mappings: Mapping[]): Promise<void> {
  const dm = view.memory;
  const byId = new Map(mappings.map((m) => [m.id, m]));
  // A space is this policy's (then an open file's), or another mount's sharing the device.
  for (const space of dm.liveSpaces()) {
    if (view.ownsSpace(space.id) ? !byId.has(space.id) : !dm.hasOwner(space.id))
      throw brokenIn(
        'device',
        `device address space ${space.id} belongs to no open file: it was not forgotten, and its page table leaks`,
      );
  }
  const spaces = dm.liveSpaces().filter((t) => view.ownsSpace(t.id));
  // Every table whole, all readbacks queued at once.
  const tables: Table[] = await Promise.all(
    spaces.map(async (space) => ({
      space,
      m: byId.get(space.id)!,
      rows: await liveRows(dm, space),
    })),
  );
  checkPteBits(tables);
  const mappedBy = checkOneFramePerPage(tables);
  for (const t of tables) checkRecords(policy, view, t);
  checkFrames(view, byId, mappedBy);
  await checkReadOnlyCopies(policy, view, mappings);
}

/** PTEs read back at once: a table as large as a file of gigabytes is read a window at a time. */
const PTE_WINDOW = 1 << 16;

/** The non-empty PTEs of a whole table (any bit set): what the checks look at, bounded by what is mapped. */
async function liveRows(
  dm: DeviceCheckView['memory'],
  space: DevicePageTable,
): Promise<Map<number, DevicePageState>> {
  const rows = new Map<number, DevicePageState>();
  for (let first = 0; first < space.capacity; first += PTE_WINDOW) {
    const last = Math.min(space.capacity, first + PTE_WINDOW) - 1;
    for (const r of await dm.snapshot(space, first, last)) {
      if (r.perm !== 'none' || r.frame !== null || r.dirty || r.failRead || r.failWrite) rows.set(r.index, r);
    }
  }
  return rows;
}

function checkPteBits(tables: Table[]): void {
  for (const { m, rows } of tables) {
    for (const r of rows.values()) {
      if (r.failRead || r.failWrite) {
        const which = [r.failRead ? 'FAIL_READ' : '', r.failWrite ? 'FAIL_WRITE' : '']
          .filter(Boolean)
          .join(', ');
        throw broken(
          m,
          r.index,
          `${which} is left on its PTE after the op: a refusal holds for one kernel run only`,
        );
      }
      if (r.dirty && r.perm === 'ro')
        throw broken(
          m,
          r.index,
          'DIRTY is set on a read-only PTE: write-protect clears DIRTY once the data is copied back',
        );
      if (r.dirty && r.perm === 'none')
        throw broken(m, r.index, 'DIRTY is set on an empty PTE: revoke clears every bit');
    }
  }
}

/** Frame -> the page whose PTE maps it; two PTEs on one frame are broken. */
function checkOneFramePerPage(tables: Table[]): Map<number, { m: Mapping; index: number }> {
  const mappedBy = new Map<number, { m: Mapping; index: number }>();
  for (const { m, rows } of tables) {
    for (const r of rows.values()) {
      if (r.frame === null) continue;
      const other = mappedBy.get(r.frame);
      if (other)
        throw broken(
          m,
          r.index,
          `two pages on one frame: its PTE maps frame ${r.frame}, which page ${other.index} of ${other.m.name} maps too`,
        );
      mappedBy.set(r.frame, { m, index: r.index });
    }
  }
  return mappedBy;
}

/** The GPU's PTEs, the policy's records and the device layer's shadow say the same, page by page. */
function checkRecords(policy: DevicePolicy, view: DeviceCheckView, { space, m, rows }: Table): void {
  const indices = new Set<number>([...policy.deviceIndices(m), ...space.entries.keys()]);
  for (const r of rows.values()) if (r.perm !== 'none') indices.add(r.index);
  for (const index of [...indices].sort((a, b) => a - b)) {
    const gpu = rows.get(index) ?? NO_PTE;
    const rec = view.record(m, index);
    if (rec && gpu.perm === 'none')
      throw broken(
        m,
        index,
        `the policy holds a ${rec.perm} copy in frame ${rec.frame} and the GPU has no PTE for it`,
      );
    if (!rec && gpu.perm !== 'none')
      throw broken(
        m,
        index,
        `the GPU maps it ${gpu.perm} to frame ${gpu.frame} and the policy holds no record of it`,
      );
    if (rec && (rec.perm !== gpu.perm || rec.frame !== gpu.frame))
      throw broken(
        m,
        index,
        `the GPU page table says ${describePte(gpu)}, the policy ${rec.perm} frame ${rec.frame}`,
      );
    const shadow = space.entries.get(index);
    if ((shadow?.perm ?? 'none') !== gpu.perm || (shadow && shadow.frame !== gpu.frame))
      throw broken(
        m,
        index,
        `the device layer's host shadow says ${describePte(shadow)}, the GPU ${describePte(gpu)}`,
      );
    if (gpu.frame === null) continue;
    const owner = view.memory.pool.owner(gpu.frame);
    if (!owner || owner.space !== space.id || owner.index !== index) {
      const who = owner
        ? `page ${owner.index} of device address space ${owner.space}`
        : 'no one (it is free)';
      throw broken(m, index, `its PTE maps frame ${gpu.frame}, whose owner is ${who}`);
    }
  }
}

/** Every owned frame is mapped by its owner's PTE; no frame is lost or free twice. */
function checkFrames(
  view: DeviceCheckView,
  byId: Map<number, Mapping>,
  mappedBy: Map<number, { m: Mapping; index: number }>,
): void {
  const pool = view.memory.pool;
  const owned = pool.ownedFrames();
  for (const f of owned) {
    const o = pool.owner(f)!;
    if (!view.ownsSpace(o.space)) continue; // a frame of another mount sharing the device
    const user = mappedBy.get(f);
    if (user && user.m.id === o.space && user.index === o.index) continue;
    const m = byId.get(o.space) ?? { name: `device address space ${o.space}` };
    throw broken(m, o.index, `frame ${f} is owned by it but neither mapped nor free: the frame leaked`);
  }
  if (owned.length + pool.freeCount !== pool.devicePages)
    throw brokenIn(
      'device frames',
      `${owned.length} owned + ${pool.freeCount} free of ${pool.devicePages}: a frame was lost or freed twice`,
    );
}

/** Read-only copies hold their page's data: A for C/D, the disk for a clean E. One copy for all frames. */
async function checkReadOnlyCopies(
  policy: DevicePolicy,
  view: DeviceCheckView,
  mappings: Mapping[],
): Promise<void> {
  const dm = view.memory;
  const want: { m: Mapping; index: number; frame: number; data: Uint8Array; of: string }[] = [];
  for (const m of mappings) {
    let disk: DiskReader | null = null;
    try {
      for (const index of policy.deviceIndices(m)) {
        const rec = view.record(m, index);
        if (rec?.perm !== 'ro') continue;
        const e = m.i_pages.get(index);
        if (e?.kind === 'page' && e.flags & PG_uptodate) {
          want.push({ m, index, frame: rec.frame, data: e.data, of: 'A' });
        } else if (e?.kind === 'device') {
          if (rec.diskStale && policy.table.dirtyReadOnlyEntries) continue; // newer than the disk: writeback bounces it
          if (rec.diskStale)
            throw broken(
              m,
              index,
              'a device entry whose read-only copy holds data the disk lacks: writeback never writes it',
            );
          disk ??= DiskReader.open(m);
          if (disk) want.push({ m, index, frame: rec.frame, data: disk.page(index), of: 'the disk' });
        }
      }
    } finally {
      disk?.close();
    }
  }
  if (want.length === 0) return;
  // Read with the device's copier itself: no counter moves and no fault is injected.
  const pages = await frameCopier(dm.gpu).read(
    dm.pool,
    want.map((w) => w.frame),
  );
  want.forEach((w, i) => {
    const at = firstDifference(pages[i], w.data);
    if (at >= 0)
      throw broken(
        w.m,
        w.index,
        `its read-only device copy (frame ${w.frame}) differs from ${w.of} at byte offset ${at}`,
      );
  });
}

/** The first offset where `a` and `b` differ, -1 if none: memcmp first, the byte loop only on a miss. */
function firstDifference(a: Uint8Array, b: Uint8Array): number {
  if (Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(b)) return -1;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

/** Pages of a file's backing store read with pread, around the mount (and any fault injected in it). */
class DiskReader {
  private constructor(
    private readonly fd: number,
    private readonly pageSize: number,
  ) {}

  static open(m: Mapping): DiskReader | null {
    if (!(m.a_ops instanceof BackingFile)) return null;
    return new DiskReader(openSync(m.a_ops.path, 'r'), m.pageSize);
  }

  /** Page `index` as the disk has it; past EOF it reads as zeros, as readpage fills it. */
  page(index: number): Uint8Array {
    const buf = new Uint8Array(this.pageSize);
    for (let done = 0; done < buf.length; ) {
      const n = readSync(this.fd, buf, done, buf.length - done, index * this.pageSize + done);
      if (n === 0) break;
      done += n;
    }
    return buf;
  }

  close(): void {
    closeSync(this.fd);
  }
}
