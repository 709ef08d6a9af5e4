/**
 * A page's life, traced (`--trace PAGES` of replay and stress): one event per piece of work done to
 * a traced page, in order, with the op line, the event (device write fault, cpu-read, writeback,
 * host-reclaim ...), the page's state before and after in the scheme tables' letters (host A,
 * device A', CPU mappings) and the work done (page_mkwrite, copy-back, shootdown ...): Kara's and
 * Glisse's state machines watched page by page.
 *
 * The page cache (src/mm) and the device policies both report here: src/mm the work it does itself
 * (readpage, writepage, reclaim, CPU faults, write(2), truncation), the policy the rows of its
 * table it carries out. A tracer is owned by the mount's PageCache; the mount gives it `stateOf`
 * (the device column comes from the policy, which src/mm does not know).
 */
import { HmmlabError } from '../errors.ts';
import { asMapping } from './mapping.ts';
import type { AddressSpace } from './types.ts';

/** A page's state in the tables' letters: host '-' C D S E; device and CPU '-' ro rw. */
export interface TraceState {
  host: string;
  dev: string;
  cpu: string;
}

export interface TraceEvent {
  /** The op line the engine was on (0: before the first op; the final unmount keeps the last). */
  line: number;
  file: string;
  index: number;
  event: string;
  before: TraceState;
  after: TraceState;
  work: readonly string[];
}

/** Which pages: `0-3,7,100-` (a range with no end runs to the end of the file). */
export type PageSet = readonly (readonly [number, number])[];

/** Parse `--trace PAGES`: page indices and ranges, comma-separated; EINVAL naming the bad part. */
export function parsePageSet(text: string): PageSet {
  const out: [number, number][] = [];
  for (const part of text.split(',')) {
    const m = /^\s*(\d+)\s*(?:(-)\s*(\d*)\s*)?$/.exec(part);
    if (!m) {
      throw new HmmlabError(
        'EINVAL',
        `bad --trace "${text}": expected page indices and ranges such as 0-3,7,100- (got "${part.trim()}")`,
      );
    }
    const a = Number(m[1]);
    const b = m[2] ? (m[3] ? Number(m[3]) : Number.MAX_SAFE_INTEGER) : a;
    if (!Number.isSafeInteger(a) || b < a) {
      throw new HmmlabError('EINVAL', `bad --trace "${text}": range "${part.trim()}" is empty`);
    }
    out.push([a, b]);
  }
  return out;
}

const letters = (s: TraceState) => `(A ${s.host}, A' ${s.dev}, CPU ${s.cpu})`;

/** The line stderr gets for an event. */
export function formatTraceEvent(e: TraceEvent, prefix = ''): string {
  const work = e.work.length ? `: ${e.work.join(', ')}` : '';
  return `trace: ${prefix}line ${e.line} ${e.file} page ${e.index}: ${e.event} ${letters(e.before)} -> ${letters(e.after)}${work}`;
}

export class PageTracer {
  /** The op line the engine is working on (replay sets it before each op). */
  line = 0;
  /** The mount's: a page's state now (host and CPU from the page cache, the device from the policy). */
  private stateOf: (m: AddressSpace, index: number) => TraceState = () => ({ host: '-', dev: '-', cpu: '-' });

  constructor(
    readonly pages: PageSet,
    private readonly onEvent: (e: TraceEvent) => void,
  ) {}

  /** HmmFs at mount: how to read a page's state (it knows the policy). */
  setStateOf(fn: (m: AddressSpace, index: number) => TraceState): void {
    this.stateOf = fn;
  }

  wants(index: number): boolean {
    return this.pages.some(([a, b]) => index >= a && index <= b);
  }

  /** The states of the traced pages among `indices` now (null: none traced), to pass to end(). */
  begin(m: AddressSpace, indices: Iterable<number>): Map<number, TraceState> | null {
    let out: Map<number, TraceState> | null = null;
    for (const i of indices) {
      if (!this.wants(i)) continue;
      out ??= new Map();
      out.set(i, this.stateOf(m, i));
    }
    return out;
  }

  /**
   * Page `index` met `event`, found in state `before`, with `work` done: report it with its state
   * now. Without work, only a change of state is reported (a path that found nothing to do is
   * silent).
   */
  emit(m: AddressSpace, index: number, event: string, before: TraceState, work: readonly string[]): void {
    if (!this.wants(index)) return;
    const after = this.stateOf(m, index);
    const same = after.host === before.host && after.dev === before.dev && after.cpu === before.cpu;
    if (same && work.length === 0) return;
    this.onEvent({ line: this.line, file: m.name, index, event, before, after, work });
  }
}

/** The work to come on the traced pages among `indices` of `m`: call end() once it is done. */
export interface TraceScope {
  end(event: string, work: readonly string[] | ((index: number) => readonly string[] | null)): void;
}

/**
 * Start tracing work on pages `indices` of `m` (null when the mount traces none of them: the
 * common case costs a lookup). end(event, work) reports each page with its state then; a work
 * function returning null skips that page (it did not happen to it).
 */
export function trace_begin(m: AddressSpace, indices: Iterable<number>): TraceScope | null {
  const tr = asMapping(m).host.tracer;
  if (!tr) return null;
  const before = tr.begin(m, indices);
  if (!before) return null;
  return {
    end(event, work) {
      for (const [i, s] of before) {
        const w = typeof work === 'function' ? work(i) : work;
        if (w) tr.emit(m, i, event, s, w);
      }
    },
  };
}
