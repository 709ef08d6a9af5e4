/**
 * A CPU thread's loads and stores through shared mappings (what the MMU and the TLB do for a user
 * thread): page by page, enter an access (the thread's access sequence goes odd, a seqcount write
 * side that the owner's shootdown reads), load the page's PTE word with Atomics, check the
 * permission, copy straight from or into the host pool's bytes, and leave the access (sequence
 * even). A PTE without the permission leaves the access first, then sends a CPU fault to the owner,
 * awaits it and runs the access again.
 *
 * An access never awaits, never takes a lock and never blocks (but for the test-only stall), so the
 * window in which a thread may use a PTE it read is one page's copy: that is this lab's TLB. The
 * owner may change a PTE at any time; the change is done when cpu_tlb_shootdown (tlb.ts) saw every
 * thread that was inside an access leave it. Ordering: the sequence and the PTE are touched only
 * with Atomics (sequentially consistent), so either the owner's read of the sequence sees the
 * thread inside, or the thread's PTE load sees the new PTE (Dekker's pattern).
 *
 * One CpuMm serves one thread: a worker (src/cpu/worker.ts) or the owner thread itself.
 */
import { HmmlabError } from '../errors.ts';
import { checkOffset } from '../mm/args.ts';
import { pte_none, pte_slot, pte_write } from '../mm/pte.ts';
import {
  CPU_SLOT_WORDS,
  type CpuAccessStats,
  type CpuFaultHandler,
  SLOT_INDEX,
  SLOT_SEQ,
  SLOT_VMA,
  SLOT_WAITERS,
  type VmaDesc,
} from './protocol.ts';
import { STALL_PARKED, STALL_RELEASED } from './stall.ts';

/**
 * Faults in a row on one page before the access gives up: an owner that answers a fault without
 * making the page present would otherwise keep the thread faulting for ever.
 */
export const MAX_FAULT_RETRIES = 10_000;

/** A mapping as this thread sees it: the PTE words and views of the pool. */
class MappedVma {
  readonly pte: Int32Array;
  readonly bytes: Uint8Array;
  readonly words: Uint32Array;
  constructor(readonly desc: VmaDesc) {
    this.pte = new Int32Array(desc.pte);
    this.bytes = new Uint8Array(desc.pool);
    this.words = new Uint32Array(desc.pool);
  }
  get length(): number {
    return this.desc.nrPages * this.desc.pageSize;
  }
}

export class CpuMm {
  private readonly vmas = new Map<number, MappedVma>();
  private readonly base: number;
  private stall: { vmaId: number; index: number; ctl: Int32Array } | null = null;
  private readonly counters: CpuAccessStats = { accesses: 0, faults: 0 };

  constructor(
    /** Every thread's per-CPU words (protocol.ts). */
    private readonly seq: Int32Array,
    /** This thread's CPU number (its slot). */
    readonly cpu: number,
    private readonly owner: CpuFaultHandler,
  ) {
    this.base = cpu * CPU_SLOT_WORDS;
    if (this.base + CPU_SLOT_WORDS > seq.length)
      throw new Error(`cpu ${cpu} has no slot in the sequence words`);
  }

  stats(): CpuAccessStats {
    return { ...this.counters };
  }

  /** Learn a mapping (the owner hands its descriptor over at mmap). */
  attach(desc: VmaDesc): void {
    this.vmas.set(desc.id, new MappedVma(desc));
  }

  detach(vmaId: number): void {
    this.vmas.delete(vmaId);
  }

  /**
   * Test hook: the next access to page `index` of `vmaId` parks inside the access, after its PTE
   * check passed and before its copy, until the owner releases it (stall.ts). It blocks the
   * thread (Atomics.wait), so only a worker may arm it.
   */
  armStall(vmaId: number, index: number, ctl: SharedArrayBuffer): void {
    this.stall = { vmaId, index, ctl: new Int32Array(ctl) };
  }

  /** Bytes [off, off + len) of the mapping; a page past EOF faults with SIGBUS. */
  async load(vmaId: number, off: number, len: number): Promise<Uint8Array> {
    const v = await this.range(vmaId, 'load', off, len);
    const out = new Uint8Array(len);
    await this.eachPage(v, off, len, false, (from, to, pos) =>
      out.set(v.bytes.subarray(from, to), pos - off),
    );
    return out;
  }

  /** Store bytes at off; a page whose PTE is not writable faults (page_mkwrite in the owner). */
  async store(vmaId: number, off: number, bytes: Uint8Array): Promise<void> {
    const v = await this.range(vmaId, 'store', off, bytes.length);
    await this.eachPage(v, off, bytes.length, true, (from, to, pos) =>
      v.bytes.set(bytes.subarray(pos - off, pos - off + (to - from)), from),
    );
  }

  /**
   * Run `copy` on each page's part of [off, off + len) inside an access whose PTE grants it, with
   * the pool byte range [from, to) of that part and its offset `pos` in the mapping; fault and run
   * the access again where the PTE does not.
   */
  private async eachPage(
    v: MappedVma,
    off: number,
    len: number,
    write: boolean,
    copy: (from: number, to: number, pos: number) => void,
  ): Promise<void> {
    const ps = v.desc.pageSize;
    const end = off + len;
    let tries = 0;
    for (let pos = off; pos < end; ) {
      const index = Math.floor(pos / ps);
      const next = Math.min(end, (index + 1) * ps);
      const pte = this.access(v, index, write);
      if (pte === 0) {
        await this.fault(v, index, write, ++tries);
        continue;
      }
      const from = pte_slot(pte) * ps + (pos - index * ps);
      copy(from, from + (next - pos), pos);
      this.leave();
      pos = next;
      tries = 0;
    }
  }

  /**
   * Atomics.add of `delta` to the u32 at `off` (4-aligned), `times` times, each access needing
   * write permission (an atomic RMW is a write). Returns the last old value. `perAccess` adds run
   * in one access under one PTE check (default 1: each its own access): a run of them through one
   * cached translation, as a CPU's TLB holds one for many instructions, and a shootdown that takes
   * the permission away waits for the run to end.
   */
  async atomicAdd(vmaId: number, off: number, delta: number, times = 1, perAccess = 1): Promise<number> {
    const v = await this.range(vmaId, 'atomicAdd', off, 4);
    if (off % 4 !== 0) throw new HmmlabError('EINVAL', `atomicAdd: offset ${off} is not a multiple of 4`);
    const ps = v.desc.pageSize;
    const index = Math.floor(off / ps);
    const word = (off - index * ps) >>> 2;
    let old = 0;
    let tries = 0;
    for (let n = 0; n < times; ) {
      const pte = this.access(v, index, true);
      if (pte === 0) {
        await this.fault(v, index, true, ++tries);
        continue;
      }
      const at = ((pte_slot(pte) * ps) >>> 2) + word;
      const run = Math.max(1, Math.min(perAccess, times - n));
      for (let k = 0; k < run; k++) old = Atomics.add(v.words, at, delta);
      this.leave();
      n += run;
      tries = 0;
    }
    return old;
  }

  /**
   * A load of [off, off + len) (within one page) held under one PTE check for up to `holdMs`:
   * `look` sees the page's bytes in place, round after round, until it returns false or the time
   * is up. As a TLB keeps a translation for many instructions: a shootdown that takes the page
   * away waits for the hold to end, and a reclaim that does not wait lets `look` see the slot's
   * next page. Returns the rounds looked.
   */
  async hold(
    vmaId: number,
    off: number,
    len: number,
    holdMs: number,
    look: (bytes: Uint8Array) => boolean,
  ): Promise<number> {
    const v = await this.range(vmaId, 'hold', off, len);
    const ps = v.desc.pageSize;
    const index = Math.floor(off / ps);
    if (len === 0 || Math.floor((off + len - 1) / ps) !== index)
      throw new HmmlabError('EINVAL', `hold: ${off}+${len} is not within one page`);
    for (let tries = 1; ; tries++) {
      const pte = this.access(v, index, false);
      if (pte === 0) {
        await this.fault(v, index, false, tries);
        continue;
      }
      const from = pte_slot(pte) * ps + (off - index * ps);
      const bytes = v.bytes.subarray(from, from + len);
      const until = performance.now() + holdMs;
      let rounds = 0;
      try {
        do rounds++;
        while (look(bytes) && performance.now() < until);
      } finally {
        this.leave();
      }
      return rounds;
    }
  }

  /**
   * Enter an access to page `index` and check its PTE. Non-zero: the PTE word, which grants the
   * access; the thread is inside the access and the caller copies through that word (never a
   * second load of it), then leave()s. Zero: no permission, the access already left.
   */
  private access(v: MappedVma, index: number, write: boolean): number {
    const seq = this.seq;
    const b = this.base;
    // What the access is on, published before the sequence goes odd (the owner reads them after).
    Atomics.store(seq, b + SLOT_VMA, v.desc.id);
    Atomics.store(seq, b + SLOT_INDEX, index);
    Atomics.add(seq, b + SLOT_SEQ, 1);
    this.counters.accesses++;
    const pte = Atomics.load(v.pte, index);
    if (pte_none(pte) || (write && !pte_write(pte))) {
      this.leave();
      return 0;
    }
    if (this.stall !== null && this.stall.vmaId === v.desc.id && this.stall.index === index) this.park();
    return pte;
  }

  private leave(): void {
    const b = this.base;
    Atomics.add(this.seq, b + SLOT_SEQ, 1);
    // Wake the owner only when it waits on us: notify is not free, and accesses are many.
    if (Atomics.load(this.seq, b + SLOT_WAITERS) !== 0) Atomics.notify(this.seq, b + SLOT_SEQ);
  }

  private park(): void {
    const { ctl } = this.stall!;
    this.stall = null;
    Atomics.store(ctl, 0, STALL_PARKED);
    Atomics.notify(ctl, 0);
    while (Atomics.load(ctl, 0) !== STALL_RELEASED) Atomics.wait(ctl, 0, STALL_PARKED);
  }

  /** A CPU fault to the owner (the caller runs the access again); `tries` in a row on this page. */
  private async fault(v: MappedVma, index: number, write: boolean, tries: number): Promise<void> {
    if (tries > MAX_FAULT_RETRIES) {
      throw new HmmlabError(
        'EFAULT',
        `cpu ${this.cpu}: ${MAX_FAULT_RETRIES} ${write ? 'write' : 'read'} faults in a row on page ${index} ` +
          `of ${v.desc.name} (mapping ${v.desc.id}) and its PTE still does not grant the access`,
      );
    }
    this.counters.faults++;
    await this.owner.fault(v.desc.id, index, write);
  }

  /** The mapping, and [off, off + len) within it (SIGSEGV otherwise). */
  private async range(vmaId: number, what: string, off: number, len: number): Promise<MappedVma> {
    checkOffset(`${what} offset`, off);
    checkOffset(`${what} length`, len);
    let v = this.vmas.get(vmaId);
    if (!v) {
      v = new MappedVma(await this.owner.vma(vmaId));
      this.vmas.set(vmaId, v);
    }
    if (off + len > v.length) {
      throw new HmmlabError(
        'EFAULT',
        `${what} at offset ${off} length ${len} runs past the ${v.length} bytes of mapping ${vmaId} ` +
          `of ${v.desc.name} (SIGSEGV)`,
      );
    }
    return v;
  }
}
