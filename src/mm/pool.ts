/**
 * The host page pool: every host page of one mount is a slot of ONE SharedArrayBuffer, so that CPU
 * worker threads (a later issue) can map the very same bytes. A page's `data` is a view into it.
 */
import { HmmlabError } from '../errors.ts';

export class PagePool {
  readonly sab: SharedArrayBuffer;
  readonly pageSize: number;
  readonly nrPages: number;
  private readonly free: number[] = [];
  /** The most slots in use at once since the pool was made (or resetPeak): what compare reports. */
  peak = 0;

  constructor(nrPages: number, pageSize: number) {
    const bytes = nrPages * pageSize;
    if (bytes > 2 ** 32) {
      throw new HmmlabError(
        'EINVAL',
        `hostPages ${nrPages} x pageSize ${pageSize} is over the 4 GiB pool limit`,
      );
    }
    this.sab = new SharedArrayBuffer(bytes);
    this.pageSize = pageSize;
    this.nrPages = nrPages;
    // Pop from the end: slot 0 is handed out first.
    for (let s = nrPages - 1; s >= 0; s--) this.free.push(s);
  }

  get nrFree(): number {
    return this.free.length;
  }

  /** A free slot, zeroed (a fresh page never leaks another file's bytes), or -1 when the pool is full. */
  alloc(): number {
    const slot = this.free.pop();
    if (slot === undefined) return -1;
    this.peak = Math.max(this.peak, this.nrPages - this.free.length);
    this.view(slot).fill(0);
    return slot;
  }

  /** Start a new high-water mark from the slots in use now. */
  resetPeak(): void {
    this.peak = this.nrPages - this.free.length;
  }

  release(slot: number): void {
    this.free.push(slot);
  }

  view(slot: number): Uint8Array {
    return new Uint8Array(this.sab, slot * this.pageSize, this.pageSize);
  }
}
