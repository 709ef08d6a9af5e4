/**
 * Device memory: a pool of `devicePages` frames of `pageSize` bytes in real GPU storage buffers.
 * One binding holds at most maxStorageBufferBindingSize bytes, so the pool is split over up to
 * MAX_FRAME_BUFFERS buffers of `framesPerBuffer` frames; kernels bind all of them and pick one by
 * frame number (shaders/frames.wgsl).
 *
 * The pool keeps the frame's owner (address space id and page index: the device rmap), an LRU of
 * owned frames (oldest first) and pins: a frame pinned by a fault batch in service cannot be
 * chosen for eviction until its PTE is installed.
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
  /** Free frames, popped from the end; kept so that a batch of allocations is mostly contiguous. */
  private freeList: number[] = [];
  /** Owned frames in LRU order: the first key is the least recently used. */
  private readonly lru = new Map<number, true>();
  private readonly pins = new Map<number, number>();
  /** The most frames owned at once since the pool was made (or resetPeak): what compare reports. */
  peak = 0;
  /** copy.ts: the plain bounce buffer of host -> device copies (made at the first copy). */
  bounce?: Uint8Array;

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
    for (let f = devicePages - 1; f >= 0; f--) this.freeList.push(f);
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
    return this.freeList.length;
  }

  /** Take up to `n` free frames for `owners`, ascending; fewer when the free list runs out. */
  takeFree(owners: FrameOwner[]): number[] {
    const got: number[] = [];
    for (const owner of owners) {
      const f = this.freeList.pop();
      if (f === undefined) break;
      this.owners[f] = owner;
      got.push(f);
    }
    this.peak = Math.max(this.peak, this.devicePages - this.freeList.length);
    return got;
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
    this.peak = this.devicePages - this.freeList.length;
  }

  /** Return a frame to the free list. */
  release(frame: number): void {
    this.checkFrame(frame);
    if (this.owners[frame] === null) return;
    this.owners[frame] = null;
    this.lru.delete(frame);
    this.pins.delete(frame);
    this.freeList.push(frame);
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
