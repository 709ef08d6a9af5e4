/**
 * The fault buffer, as shaders/mmu.wgsl fills it, and the pure steps of fault handling: parse the
 * readback, coalesce duplicates, cut into batches (NVIDIA UVM's fetch, coalesce, service order).
 *
 * Layout (u32 words), per device address space:
 *   [0] unique faults this launch   [1] raw faults   [2] entries that did not fit   [3] unused
 *   [4 .. 4 + 2*cap)                entries: (page | write << 31, first faulting thread)
 *   [countsBase .. + 2*pages)       raw fault count per (page, access): also the in-kernel pending bit
 */

export const F_UNIQUE = 0;
export const F_RAW = 1;
export const F_OVERFLOW = 2;
export const F_ENTRIES = 4;
/** Entries read back with the header; more take a second, rarer readback. */
export const FIRST_READ_ENTRIES = 1024;

export interface FaultLayout {
  /** Entries the buffer holds: one per (page, access) of the table, so it never overflows. */
  cap: number;
  countsBase: number;
  words: number;
}

export function faultLayout(pages: number): FaultLayout {
  const cap = 2 * pages;
  const countsBase = F_ENTRIES + 2 * cap;
  return { cap, countsBase, words: countsBase + 2 * pages };
}

/** One device fault as the host services it. */
export interface DeviceFault {
  /** Page index in the device address space (the file's page index). */
  index: number;
  write: boolean;
  /** The first thread that faulted on it (global invocation id). */
  thread: number;
  /** Threads that faulted on this page and access (in-kernel coalesced duplicates included). */
  raw: number;
}

/**
 * Entries -> faults. `entries` holds `n` (page|write<<31, thread) pairs; `rawCount(page, write)` is
 * the per-page counter (0 where it was not read back: then 1 is assumed).
 */
export function parseFaultEntries(
  entries: Uint32Array,
  n: number,
  rawCount: (index: number, write: boolean) => number,
): DeviceFault[] {
  const out: DeviceFault[] = [];
  for (let i = 0; i < n; i++) {
    const w = entries[2 * i] >>> 0;
    const write = (w & 0x8000_0000) !== 0;
    const index = w & 0x7fff_ffff;
    out.push({ index, write, thread: entries[2 * i + 1], raw: Math.max(1, rawCount(index, write)) });
  }
  return out;
}

/**
 * One fault per page, in page order (so that frame allocation and copies form runs): a read and a
 * write fault on the same page become one write fault (servicing the write grants read too);
 * raw counts add up. Entries that name the same (page, access) twice merge as well.
 */
export function coalesceFaults(faults: DeviceFault[]): DeviceFault[] {
  const byPage = new Map<number, DeviceFault>();
  for (const f of faults) {
    const prev = byPage.get(f.index);
    if (!prev) {
      byPage.set(f.index, { ...f });
      continue;
    }
    prev.raw += f.raw;
    if (f.write && !prev.write) {
      prev.write = true;
      prev.thread = f.thread;
    }
  }
  return [...byPage.values()].sort((a, b) => a.index - b.index);
}

/** Cut into batches of at most `size`. */
export function faultBatches<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** "0-3, 7, 9-10": page lists in messages. */
export function formatPages(indices: Iterable<number>): string {
  const sorted = [...new Set(indices)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j] + 1) j++;
    parts.push(i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return parts.join(', ');
}
