/**
 * A test-only handshake that parks a worker inside an access (after its PTE check, before its
 * copy), so a test can change the PTE and run a shootdown at exactly that point: one Int32 in
 * shared memory, armed -> parked (the worker, which then waits) -> released (the owner).
 */
export const STALL_ARMED = 0;
export const STALL_PARKED = 1;
export const STALL_RELEASED = 2;

type WaitAsync = (
  a: Int32Array,
  i: number,
  v: number,
  t?: number,
) => { async: false; value: 'not-equal' | 'timed-out' } | { async: true; value: Promise<'ok' | 'timed-out'> };

/** Atomics.waitAsync (ES2024; Node 20 has it, the ES2023 lib that tsconfig names does not). */
export const waitAsync: WaitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;

export class AccessStall {
  readonly sab = new SharedArrayBuffer(4);
  private readonly ctl = new Int32Array(this.sab);

  /** Resolves once the worker is parked inside the access (never blocks the owner's thread). */
  async parked(timeoutMs = 10_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (Atomics.load(this.ctl, 0) === STALL_ARMED) {
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`no worker parked in the armed access within ${timeoutMs} ms`);
      const r = waitAsync(this.ctl, 0, STALL_ARMED, left);
      if (r.async) await r.value;
    }
  }

  get isParked(): boolean {
    return Atomics.load(this.ctl, 0) === STALL_PARKED;
  }

  /** Let the parked worker finish its access. */
  release(): void {
    Atomics.store(this.ctl, 0, STALL_RELEASED);
    Atomics.notify(this.ctl, 0);
  }
}
