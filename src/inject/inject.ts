/**
 * Fault injection (lib/fault-inject.c's should_fail, for hmmlab's engine): named points where a
 * real failure can happen (a pread, a GPU copy, a frame allocation, a launch, page_mkwrite, ...).
 * Each time the engine reaches a point it asks `should_fail(point)`; the injector counts the
 * attempts (from 1, over the whole run) and says which one fails: the K-th of a `POINT@K` spec, or
 * each attempt with a seeded probability (`--inject-rate`). The caller then fails that one attempt
 * exactly as the real thing would (EIO from a pread, EGPU from a copy, ...); the engine's error
 * paths must leave every page's state as it was, so the operation can be retried.
 *
 * Every transient point is retryable; `device-lost` is permanent (the GPU device is destroyed).
 * `race-invalidate` fails nothing: it runs an mmu_interval invalidation inside fault service.
 */
import { uniformInt } from 'pure-rand/distribution/uniformInt';
import { xoroshiro128plus } from 'pure-rand/generator/xoroshiro128plus';
import { HmmlabError } from '../errors.ts';

export const INJECT_POINTS = [
  'pread', // a read of the backing file: EIO
  'pwrite', // a write to the backing file: EIO, nothing written
  'pwrite-short', // a write to the backing file writes only part of its bytes
  'fdatasync', // EIO
  'copy-to-device', // a host-to-device copy: EGPU
  'copy-from-device', // a device-to-host copy: its readback map times out (ETIMEDOUT)
  'frame-alloc', // allocating device frames: ENOMEM (GPU memory exhausted)
  'kernel-launch', // a kernel launch: EGPU
  'page_mkwrite', // the filesystem refuses one page_mkwrite: ENOSPC
  'race-invalidate', // an invalidation between the start of fault service and the PTE install
  'device-lost', // the device is destroyed at that kernel launch (permanent)
] as const;

export type InjectPoint = (typeof INJECT_POINTS)[number];

/** The points whose failure an operation can survive by being retried. */
export const TRANSIENT_POINTS: readonly InjectPoint[] = INJECT_POINTS.filter((p) => p !== 'device-lost');

export interface InjectSpec {
  point: InjectPoint;
  /** The attempt that fails, counting from 1 over the whole run. */
  nth: number;
}

/** What fired: the point, which attempt of it, and at which op line (0: before the first op). */
export interface InjectedFault {
  point: InjectPoint;
  nth: number;
  line: number;
  /** Where, when not in the op itself (the final unmount). */
  where?: string;
}

/** Points that fail nothing: a short write is completed, a raced install is retried in the run. */
const ABSORBED: ReadonlySet<InjectPoint> = new Set(['pwrite-short', 'race-invalidate']);

/** Whether a fired fault makes the operation fail (so that replay runs it again). */
export const failsOp = (f: InjectedFault): boolean => !ABSORBED.has(f.point);

function isPoint(s: string): s is InjectPoint {
  return (INJECT_POINTS as readonly string[]).includes(s);
}

/** Parse `POINT@K[,POINT@K...]`; EINVAL naming the bad part. */
export function parseInjectSpecs(text: string): InjectSpec[] {
  const specs: InjectSpec[] = [];
  for (const part of text.split(',')) {
    const s = part.trim();
    const m = /^([a-z_-]+)@(\d+)$/.exec(s);
    if (!m) {
      throw new HmmlabError(
        'EINVAL',
        `bad --inject "${s}": expected POINT@K (K the attempt that fails, from 1), e.g. pwrite@3`,
      );
    }
    if (!isPoint(m[1])) {
      throw new HmmlabError(
        'EINVAL',
        `bad --inject "${s}": unknown point "${m[1]}" (points: ${INJECT_POINTS.join(', ')})`,
      );
    }
    const nth = Number(m[2]);
    if (!Number.isSafeInteger(nth) || nth < 1) {
      throw new HmmlabError('EINVAL', `bad --inject "${s}": K must be an integer from 1`);
    }
    specs.push({ point: m[1], nth });
  }
  return specs;
}

export interface InjectorOptions {
  specs?: InjectSpec[];
  /** Each attempt at a transient point fails with this probability (stress --inject-rate). */
  rate?: number;
  /** Seed of the rate's PRNG. */
  seed?: number;
  /** Told about every fault as it fires (the CLI prints it on stderr). */
  onFire?: (f: InjectedFault) => void;
}

export class FaultInjector {
  /** Attempts seen per point. */
  readonly attempts = Object.fromEntries(INJECT_POINTS.map((p) => [p, 0])) as Record<InjectPoint, number>;
  /** Faults fired per point. */
  readonly fired = Object.fromEntries(INJECT_POINTS.map((p) => [p, 0])) as Record<InjectPoint, number>;
  readonly log: InjectedFault[] = [];
  /** The op line the engine is working on (replay sets it before each op), and where past it. */
  line = 0;
  where: string | undefined;
  /** While > 0, nothing fires (a retry under --inject-rate, the checker's own reads). */
  private quiet = 0;
  private readonly nth = new Map<InjectPoint, Set<number>>();
  private readonly rate: number;
  private readonly rng: ReturnType<typeof xoroshiro128plus>;

  constructor(readonly options: InjectorOptions = {}) {
    for (const s of options.specs ?? []) {
      const set = this.nth.get(s.point) ?? new Set<number>();
      set.add(s.nth);
      this.nth.set(s.point, set);
    }
    const rate = options.rate ?? 0;
    if (!(rate >= 0 && rate <= 1)) {
      throw new HmmlabError('EINVAL', `injection rate ${rate} is not a probability from 0 to 1`);
    }
    this.rate = rate;
    this.rng = xoroshiro128plus((options.seed ?? 0) | 0);
  }

  /** Whether anything can fire at all (the engine skips work to set up a point when not). */
  get armed(): boolean {
    return this.rate > 0 || this.nth.size > 0;
  }

  /** Faults fired in all. */
  get total(): number {
    return this.log.length;
  }

  /**
   * The engine reached `point`: count the attempt and say whether it fails. A firing is reported
   * to onFire before the caller fails it.
   */
  should_fail(point: InjectPoint): boolean {
    const nth = ++this.attempts[point];
    if (this.quiet > 0) return false;
    let fire = this.nth.get(point)?.has(nth) ?? false;
    if (!fire && this.rate > 0 && point !== 'device-lost') {
      // One draw per attempt at a transient point: the same seed fires at the same attempts.
      fire = uniformInt(this.rng, 0, 999_999) < this.rate * 1_000_000;
    }
    if (!fire) return false;
    this.fired[point]++;
    const f: InjectedFault = { point, nth, line: this.line, ...(this.where ? { where: this.where } : {}) };
    this.log.push(f);
    this.options.onFire?.(f);
    return true;
  }

  /**
   * Make an attempt to come at `point` fail: the next one, or the one `skip` attempts after it
   * (tests aim a fault at one step of a path this way).
   */
  failNext(point: InjectPoint, skip = 0): void {
    const set = this.nth.get(point) ?? new Set<number>();
    set.add(this.attempts[point] + 1 + skip);
    this.nth.set(point, set);
  }

  /** Run `fn` with nothing firing (attempts are still counted). */
  async suppressed<T>(fn: () => Promise<T>): Promise<T> {
    this.quiet++;
    try {
      return await fn();
    } finally {
      this.quiet--;
    }
  }
}

/** The injector of a run with no injection: never fires. */
export const NO_INJECT = new FaultInjector();

/** An injected failure is marked so the CLI can tell it from a real one (exit status, reports). */
export function injectedError(point: InjectPoint, err: HmmlabError): HmmlabError {
  (err as HmmlabError & { injected?: InjectPoint }).injected = point;
  return err;
}

/** The point that made `e` fail, if it was injected. */
export function injectedPoint(e: unknown): InjectPoint | undefined {
  return (e as { injected?: InjectPoint } | null)?.injected;
}

/** The line the CLI prints on stderr for a fault as it fires. */
export function formatInjected(f: InjectedFault): string {
  return `hmmlab: injected ${f.point}#${f.nth} at line ${f.line}${f.where ? ` (${f.where})` : ''}`;
}

/** Faults fired, by point, in the points' order: "pread 3, pwrite 1". */
export function formatFired(fired: Partial<Record<InjectPoint, number>>): string {
  const parts = INJECT_POINTS.filter((p) => (fired[p] ?? 0) > 0).map((p) => `${p} ${fired[p]}`);
  return parts.length ? parts.join(', ') : 'none';
}
