/**
 * Device memory: a pool of `devicePages` frames of `pageSize` bytes in real GPU storage buffers.
 * One binding holds at most maxStorageBufferBindingSize bytes, so the pool is split over up to
 * MAX_FRAME_BUFFERS buffers of `framesPerBuffer` frames; kernels bind all of them and pick one by
 * frame number (shaders/frames.wgsl).
 *
 * The pool keeps the frame's owner (address space id and page index: the device rmap), an LRU of
 * owned frames (oldest first) and pins: a frame pinned by a fault batch in service cannot be
 * chosen for eviction until its PTE is installed. Free frames are a bitmap allocated in runs, from
 * the lowest frame freed since the last allocation (else next-fit): consecutive page indices get consecutive frames where a free run allows, so that a batch's
 * copies are a few long runs (copy.ts) however the frames were freed before.
 */
import { HmmlabError } from '../errors.ts';
import type { GpuDevice } from '../gpu/device.ts';
import { MAX_FRAMES } from './pte.ts';

/** Frame buffers a kernel binds (bindings 5..8 in shaders/frames.wgsl). */
export const MAX_FRAME_BUFFERS = 4;
export const MIN_PAGE_SIZE = 4096;
export const MAX_PAGE_SIZE = 2 * 1024 * 1024;

export interface FrameOwner {
  space: number;
  index: number;
}

export interface FramePoolOptions {
  devicePages: number;
  pageSize: number;
  /** Frames per buffer; default: as many as one binding holds. Tests set it small to span buffers. */
  framesPerBuffer?: number;
}

export function checkPageSize(pageSize: number): void {
  if (
    !Number.isInteger(pageSize) ||
    pageSize < MIN_PAGE_SIZE ||
    pageSize > MAX_PAGE_SIZE ||
    (pageSize & (pageSize - 1)) !== 0
  ) {
    throw new HmmlabError('EINVAL', `page size ${pageSize} is not a power of two from 4 KiB to 2 MiB`);
  }
}

export class FramePool {
  readonly pageSize: number;
  readonly devicePages: number;
  readonly framesPerBuffer: number;
  readonly buffers: GPUBuffer[] = [];
  private readonly owners: (FrameOwner | null)[];
  /** 1 where the frame is free. */
  private readonly free: Uint8Array;
  private nfree: number;
  /** Where the next search for free frames starts: after the last run taken, or the lowest frame freed since. */
  private hand = 0;
  /** Owned frames in LRU order: the first key is the least recently used. */
  private readonly lru = new Map<number, true>();
  private readonly pins = new Map<number, number>();
  /** The most frames owned at once since the pool was made (or resetPeak): what compare reports. */
  peak = 0;

  constructor(gpu: GpuDevice, opts: FramePoolOptions) {
    checkPageSize(opts.pageSize);
    const { devicePages, pageSize } = opts;
    if (!Number.isInteger(devicePages) || devicePages < 1) {
      throw new HmmlabError('EINVAL', `device pages ${devicePages} is not a positive integer`);
    }
    if (devicePages > MAX_FRAMES) {
      throw new HmmlabError(
        'ELIMIT',
        `device pages ${devicePages}: a PTE holds at most ${MAX_FRAMES} frames`,
      );
    }
    const binding = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
    const fit = Math.floor(binding / pageSize);
    const perBuffer = Math.min(opts.framesPerBuffer ?? fit, fit, devicePages);
    if (perBuffer < 1 || Math.ceil(devicePages / perBuffer) > MAX_FRAME_BUFFERS) {
      throw new HmmlabError(
        'ELIMIT',
        `device memory of ${devicePages} pages of ${pageSize} bytes needs more than ${MAX_FRAME_BUFFERS} ` +
          `buffers of ${binding} bytes (maxStorageBufferBindingSize)`,
      );
    }
    this.pageSize = pageSize;
    this.devicePages = devicePages;
    this.framesPerBuffer = perBuffer;
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    for (let first = 0; first < devicePages; first += perBuffer) {
      const n = Math.min(perBuffer, devicePages - first);
      this.buffers.push(gpu.createBuffer(`frames${this.buffers.length}`, n * pageSize, usage));
    }
    this.owners = new Array(devicePages).fill(null);
    this.free = new Uint8Array(devicePages).fill(1);
    this.nfree = devicePages;
  }

  /** The buffer and byte offset of a frame. */
  locate(frame: number): { buffer: GPUBuffer; bufferIndex: number; offset: number } {
    this.checkFrame(frame);
    const bufferIndex = Math.floor(frame / this.framesPerBuffer);
    return {
      buffer: this.buffers[bufferIndex],
      bufferIndex,
      offset: (frame % this.framesPerBuffer) * this.pageSize,
    };
  }

  checkFrame(frame: number): void {
    if (!Number.isInteger(frame) || frame < 0 || frame >= this.devicePages) {
      throw new HmmlabError(
        'EINVAL',
        `frame ${frame} is not a frame of this device (0..${this.devicePages - 1})`,
      );
    }
  }

  get freeCount(): number {
    return this.nfree;
  }

  /**
   * Free frames for `owners`, in order; fewer when none are left. Each run of owners with
   * consecutive page indices (of one space) gets consecutive frames where a free run is long
   * enough, else the longest runs there are.
   */
  takeFree(owners: FrameOwner[]): number[] {
    const got: number[] = [];
    let i = 0;
    while (i < owners.length && this.nfree > 0) {
      let j = i + 1;
      while (
        j < owners.length &&
        owners[j].space === owners[i].space &&
        owners[j].index === owners[j - 1].index + 1
      )
        j++;
      for (let need = j - i; need > 0 && this.nfree > 0; ) {
        const { start, length } = this.freeRun(need);
        for (let k = 0; k < length; k++) {
          const f = start + k;
          this.free[f] = 0;
          this.owners[f] = owners[i++];
          got.push(f);
        }
        this.nfree -= length;
        need -= length;
        this.hand = (start + length) % this.devicePages;
      }
    }
    this.peak = Math.max(this.peak, this.devicePages - this.nfree);
    return got;
  }

  /**
   * A run of free frames for `need` frames: the first run from the hand that holds them all, else
   * the longest (at most `need`) met in one pass over the pool. There is at least one free frame.
   */
  private freeRun(need: number): { start: number; length: number } {
    const n = this.devicePages;
    let best = { start: -1, length: 0 };
    let f = this.hand;
    for (let seen = 0; seen < n; ) {
      if (!this.free[f]) {
        f = f + 1 === n ? 0 : f + 1;
        seen++;
        continue;
      }
      // A run never wraps past the last frame: frames n-1 and 0 are in different places.
      let len = 0;
      while (f + len < n && len < need && this.free[f + len]) len++;
      if (len === need) return { start: f, length: len };
      if (len > best.length) best = { start: f, length: len };
      seen += len;
      f += len;
      if (f >= n) f = 0;
    }
    return best;
  }

  owner(frame: number): FrameOwner | null {
    return this.owners[frame] ?? null;
  }

  /**
   * Mark a frame on the LRU most recently used. A frame off the LRU (unlisted while its eviction
   * runs) stays off: putting it back would let a second eviction revoke the same page twice.
   */
  touch(frame: number): void {
    if (!this.lru.has(frame)) return;
    this.lru.delete(frame);
    this.lru.set(frame, true);
  }

  /** Put a newly mapped frame on the LRU, most recently used: from now on it can be evicted. */
  list(frame: number): void {
    if (this.owners[frame] === null) return;
    this.lru.delete(frame);
    this.lru.set(frame, true);
  }

  /** Take a frame off the LRU (revoked but not yet freed: it cannot be evicted again). */
  unlist(frame: number): void {
    this.lru.delete(frame);
  }

  pin(frame: number): void {
    this.pins.set(frame, (this.pins.get(frame) ?? 0) + 1);
  }

  unpin(frame: number): void {
    const n = (this.pins.get(frame) ?? 0) - 1;
    if (n > 0) this.pins.set(frame, n);
    else this.pins.delete(frame);
  }

  /** Up to `n` eviction victims: the least recently used owned frames that are not pinned. */
  victims(n: number): number[] {
    const out: number[] = [];
    for (const f of this.lru.keys()) {
      if (out.length >= n) break;
      if (!this.pins.has(f)) out.push(f);
    }
    return out;
  }

  /** Start a new high-water mark from the frames owned now. */
  resetPeak(): void {
    this.peak = this.devicePages - this.nfree;
  }

  /** Return a frame to the free list. */
  release(frame: number): void {
    this.checkFrame(frame);
    if (this.owners[frame] === null) return;
    this.owners[frame] = null;
    this.lru.delete(frame);
    // Pins stay: each pinner unpins in its own finally, and a frame freed and handed to another
    // page meanwhile must keep that page's pin (a count dropped here would let its unpin take it).
    this.free[frame] = 1;
    this.nfree++;
    // The next allocation starts at the lowest frame freed since: freed frames are reused first.
    if (frame < this.hand) this.hand = frame;
  }

  /** Owned frames (for detach and loss reports). */
  ownedFrames(): number[] {
    const out: number[] = [];
    this.owners.forEach((o, f) => {
      if (o) out.push(f);
    });
    return out;
  }

  destroy(): void {
    for (const b of this.buffers) b.destroy();
  }
}
