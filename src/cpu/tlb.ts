/**
 * CPU TLB shootdown for the emulated PTEs (arch/x86/mm/tlb.c's flush_tlb_mm_range, with the IPI
 * replaced by each thread's access sequence): after the owner changed PTE words (write-protect or
 * clear), the change is done only when no thread is still inside an access it started under the
 * old PTE. The owner snapshots every CPU's sequence; a CPU whose sequence was odd (inside an access)
 * on a page that changed must reach a different value, which it does by leaving that access. The
 * wait is Atomics.waitAsync on the sequence word (the thread notifies when the owner's waiter count
 * is non-zero), so the owner's event loop, where Dawn pumps its events, keeps turning; a thread
 * that does not leave in time is an ETIMEDOUT naming it, its mapping and page.
 *
 * Why a snapshot suffices: an access that starts after the PTE store reads the new PTE (the PTE and
 * the sequence are only touched with sequentially consistent Atomics), so only accesses already
 * inside can use the old one, and each is one page's copy long.
 */
import { HmmlabError } from '../errors.ts';
import { CPU_SLOT_WORDS, SLOT_INDEX, SLOT_SEQ, SLOT_VMA, SLOT_WAITERS } from './protocol.ts';
import { waitAsync } from './stall.ts';

/** A PTE word the owner changed: the VmArea's PTE array and the page index. */
export interface PteChange {
  ptes: Int32Array;
  index: number;
}

const vmaIds = new WeakMap<ArrayBufferLike, number>();
let nextVmaId = 1;

/**
 * The id every thread knows a mapping by, given its PTE words (one PTE array per VmArea): what a
 * thread writes in its slot while inside an access, so a shootdown can tell whose access it hits.
 */
export function vma_id(ptes: Int32Array): number {
  let id = vmaIds.get(ptes.buffer);
  if (id === undefined) {
    id = nextVmaId++;
    vmaIds.set(ptes.buffer, id);
  }
  return id;
}

export interface CpuTlbStats {
  /** cpu_tlb_shootdown calls. */
  cpu_shootdowns: number;
  /** Shootdowns that found a thread inside an affected access and had to wait for it. */
  cpu_shootdown_waits: number;
  /** Threads waited for, summed over those shootdowns. */
  cpu_shootdown_waited_cpus: number;
}

export class CpuTlb {
  /** The per-CPU words (protocol.ts), shared with every thread. */
  readonly seq: Int32Array;
  shootdowns = 0;
  shootdownWaits = 0;
  private waitedCpus = 0;

  constructor(
    readonly nrCpus: number,
    /** How long a shootdown waits for a thread to leave its access before ETIMEDOUT. */
    public timeoutMs = 5000,
    /** A CPU's name for messages ("cpu worker 1 (thread 12)"). */
    private readonly cpuName: (cpu: number) => string = (cpu) => `cpu ${cpu}`,
  ) {
    this.seq = new Int32Array(new SharedArrayBuffer(nrCpus * CPU_SLOT_WORDS * 4));
  }

  stats(): CpuTlbStats {
    return {
      cpu_shootdowns: this.shootdowns,
      cpu_shootdown_waits: this.shootdownWaits,
      cpu_shootdown_waited_cpus: this.waitedCpus,
    };
  }

  /**
   * Wait until no thread is inside an access made under the old value of the changed PTEs
   * (`changed`; every access of every thread when absent, as flush_tlb_all). Call it after the
   * PTE stores, before anything that relies on the old permission being gone (copying a page
   * that is no longer writable, freeing a page that is no longer mapped).
   */
  async cpu_tlb_shootdown(changed?: Iterable<PteChange>, timeoutMs = this.timeoutMs): Promise<void> {
    this.shootdowns++;
    const hit = changed === undefined ? null : changedPages(changed);
    if (hit?.size === 0) return;
    const seq = this.seq;
    const waits: { cpu: number; s: number; vma: number; index: number }[] = [];
    for (let cpu = 0; cpu < this.nrCpus; cpu++) {
      const b = cpu * CPU_SLOT_WORDS;
      const s = Atomics.load(seq, b + SLOT_SEQ);
      if ((s & 1) === 0) continue;
      // A seqcount read: the slot's mapping and index belong to access `s` only if the sequence
      // did not move while we read them; if it moved, that access is over.
      const vma = Atomics.load(seq, b + SLOT_VMA);
      const index = Atomics.load(seq, b + SLOT_INDEX);
      if (Atomics.load(seq, b + SLOT_SEQ) !== s) continue;
      if (hit && !hit.get(vma)?.has(index)) continue;
      waits.push({ cpu, s, vma, index });
    }
    if (waits.length === 0) return;
    this.shootdownWaits++;
    this.waitedCpus += waits.length;
    const deadline = performance.now() + timeoutMs;
    for (const w of waits) await this.waitLeave(w, deadline, timeoutMs);
  }

  private async waitLeave(
    w: { cpu: number; s: number; vma: number; index: number },
    deadline: number,
    timeoutMs: number,
  ): Promise<void> {
    const seq = this.seq;
    const b = w.cpu * CPU_SLOT_WORDS;
    Atomics.add(seq, b + SLOT_WAITERS, 1);
    try {
      while (Atomics.load(seq, b + SLOT_SEQ) === w.s) {
        const left = deadline - performance.now();
        if (left <= 0) {
          throw new HmmlabError(
            'ETIMEDOUT',
            `cpu_tlb_shootdown: ${this.cpuName(w.cpu)} is still inside an access to page ${w.index} of ` +
              `mapping ${w.vma} (access sequence ${w.s}) after ${timeoutMs} ms; the PTE change is not done`,
          );
        }
        const r = waitAsync(seq, b + SLOT_SEQ, w.s, left);
        if (r.async) await r.value;
      }
    } finally {
      Atomics.sub(seq, b + SLOT_WAITERS, 1);
    }
  }
}

function changedPages(changed: Iterable<PteChange>): Map<number, Set<number>> {
  const hit = new Map<number, Set<number>>();
  for (const { ptes, index } of changed) {
    const id = vma_id(ptes);
    const s = hit.get(id);
    if (s) s.add(index);
    else hit.set(id, new Set([index]));
  }
  return hit;
}
