/**
 * The copy paths between host memory and GPU buffers, as reusable functions on a GpuDevice. The
 * page cache copies pages A -> A' and A' -> A with the fastest of them; `hmmlab bench copy`
 * measures each one.
 *
 *   host -> device   writeDevice        queue.writeBuffer (Dawn copies the data at the call)
 *   host -> device   StagingRing.write  a ring of MAP_WRITE buffers mapped ahead of need, the data set
 *                                       into the mapped range, copyBufferToBuffer; each buffer is
 *                                       re-mapped once its copies are submitted (docs/webgpu-findings.md)
 *   device -> host   ReadbackRing.read  copyBufferToBuffer into a ring of MAP_READ buffers + mapAsync,
 *                                       the next piece's map in flight while one is copied out
 * The device's page copies (src/device/copy.ts) run on the same two rings: StagingRing.tryReserve and
 * addCopy (the host pages copied straight into the mapped range), ReadbackRing.run (pieces that
 * land straight in the host pages).
 *   device -> device copyDevice         copyBufferToBuffer
 *   host -> host     copyHost           TypedArray.set, the memcpy baseline
 *
 * WebGPU moves whole 4-byte words: device offsets must be multiples of 4, and a length n covers
 * deviceSpan(n) = n rounded up to 4 bytes on the device. Host memory is exact: a write of n bytes
 * reads exactly n host bytes and zeroes the rest of its last device word; a read of n bytes
 * writes exactly n host bytes; a device-to-device copy moves the whole last word. Host memory may
 * be a view on a SharedArrayBuffer (Dawn's writeBuffer crashes on those, so they are bounced).
 * Ranges are checked before anything is submitted, so a bad request is an EINVAL here rather
 * than a validation error that Dawn prints on stdout.
 */
import { HmmlabError } from '../errors.ts';
import { align, type GpuDevice } from './device.ts';

/** WebGPU's copy granularity (writeBuffer and copyBufferToBuffer sizes and offsets). */
export const COPY_ALIGN = 4;

/** Bytes that n host bytes occupy on the device: whole words. */
export function deviceSpan(n: number): number {
  return align(n, COPY_ALIGN);
}

/** Usage of a buffer that every copy path can read and write (and kernels can bind). */
export const DEVICE_BUFFER_USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

/** A device buffer of at least `size` bytes (rounded up to whole words) for the copy paths. */
export function createDeviceBuffer(
  gpu: GpuDevice,
  label: string,
  size: number,
  usage = DEVICE_BUFFER_USAGE,
): GPUBuffer {
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new HmmlabError('EINVAL', `buffer ${label}: size ${size} is not a positive integer`);
  }
  return gpu.createBuffer(label, deviceSpan(size), usage);
}

/** Throw EINVAL unless [offset, offset + deviceSpan(n)) is a word-aligned range inside `buffer`. */
export function checkDeviceRange(buffer: GPUBuffer, offset: number, n: number, what: string): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || offset % COPY_ALIGN !== 0) {
    throw new HmmlabError(
      'EINVAL',
      `${what}: offset ${offset} in ${buffer.label} is not a multiple of ${COPY_ALIGN}`,
    );
  }
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new HmmlabError('EINVAL', `${what}: length ${n} is not a non-negative integer`);
  }
  if (offset + deviceSpan(n) > buffer.size) {
    throw new HmmlabError(
      'EINVAL',
      `${what}: ${n} bytes at offset ${offset} run past the end of ${buffer.label} (${buffer.size} bytes)`,
    );
  }
}

/**
 * host -> device by queue.writeBuffer (GpuDevice.writeBuffer: shared memory bounced, the tail word
 * padded). Dawn has copied `data` when this returns, so the caller may reuse it at once; the copy
 * reaches the buffer in queue order (before any later submit).
 */
export function writeDevice(gpu: GpuDevice, dst: GPUBuffer, dstOffset: number, data: Uint8Array): void {
  checkDeviceRange(dst, dstOffset, data.byteLength, 'writeDevice');
  gpu.checkAlive(`writeDevice ${dst.label}`);
  if (data.byteLength > 0) gpu.writeBuffer(dst, dstOffset, data);
}

/** device -> device copyBufferToBuffer of deviceSpan(n) bytes, submitted at once. */
export function copyDevice(
  gpu: GpuDevice,
  src: GPUBuffer,
  srcOffset: number,
  dst: GPUBuffer,
  dstOffset: number,
  n: number,
): void {
  checkDeviceRange(src, srcOffset, n, 'copyDevice source');
  checkDeviceRange(dst, dstOffset, n, 'copyDevice destination');
  const span = deviceSpan(n);
  if (src === dst && srcOffset < dstOffset + span && dstOffset < srcOffset + span) {
    throw new HmmlabError('EINVAL', `copyDevice: overlapping ranges in ${src.label}`);
  }
  gpu.checkAlive(`copyDevice ${src.label} -> ${dst.label}`);
  if (n === 0) return;
  const enc = gpu.device.createCommandEncoder({ label: 'copyDevice' });
  enc.copyBufferToBuffer(src, srcOffset, dst, dstOffset, span);
  gpu.device.queue.submit([enc.finish()]);
}

/** host -> host, the memcpy baseline (what a copy costs with no GPU in the way). */
export function copyHost(dst: Uint8Array, src: Uint8Array): void {
  if (dst.byteLength < src.byteLength) {
    throw new HmmlabError('EINVAL', `copyHost: ${src.byteLength} bytes do not fit in ${dst.byteLength}`);
  }
  dst.set(src);
}

export interface RingOptions {
  /** Buffers in the ring at most (staging), or in flight per read (readback). */
  buffers?: number;
  /** Bytes per buffer: larger requests are split into pieces of this size. */
  chunkBytes?: number;
}

/** A promise whose rejection is handled here and re-raised only where it is awaited. */
function quiet<T>(p: Promise<T>): Promise<T> {
  p.catch(() => {});
  return p;
}

/** One buffer of a staging ring: mapped (view), or on its way to being mapped again (ready). */
export interface StagingSlot {
  buffer: GPUBuffer;
  /** The mapped range, while mapped; null while its copies run and it is mapped again. */
  view: Uint8Array | null;
  ready: Promise<void> | null;
  used: number;
  copies: { srcOffset: number; dst: GPUBuffer; dstOffset: number; bytes: number }[];
}

/**
 * host -> device through a ring of MAP_WRITE buffers mapped ahead of need: `tryReserve` hands out a
 * range of the current buffer's mapped memory (the caller copies host bytes straight into it: one
 * copy on the host), `addCopy` records where it goes, and the buffer is submitted (unmapped, its
 * copies encoded, mapped again at once: the map resolves when its copies are done) when it is full
 * or at `flush`. Buffers are made as the copies in flight need them, up to `buffers`, so no buffer
 * is created per write (creating buffers is what makes mappedAtCreation-per-write slow).
 */
export class StagingRing {
  private readonly slots: StagingSlot[] = [];
  private cur = 0;
  readonly chunkBytes: number;
  private readonly maxSlots: number;

  constructor(
    private readonly gpu: GpuDevice,
    options: RingOptions = {},
  ) {
    this.maxSlots = options.buffers ?? 8;
    this.chunkBytes = align(options.chunkBytes ?? 4 << 20, 8);
  }

  private addSlot(at: number): StagingSlot {
    const buffer = this.gpu.createBuffer(
      `staging-${this.slots.length}`,
      this.chunkBytes,
      GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC,
      true,
    );
    const slot: StagingSlot = {
      buffer,
      view: new Uint8Array(buffer.getMappedRange()),
      ready: null,
      used: 0,
      copies: [],
    };
    this.slots.splice(at, 0, slot);
    return slot;
  }

  /**
   * A range of mapped staging memory: a multiple of `unit` bytes, at least `unit`, at most `max`
   * (rounded down to `unit`), in one buffer; or null when every buffer is in flight (await
   * `whenFree()`, then ask again). Synchronous on purpose: copy into `slot.view` at `at`, then
   * addCopy, before any await. An `await` between the reservation and its copy would let another
   * writer submit the buffer in between (its view gone, or the range sent before it was filled).
   */
  tryReserve(unit: number, max: number): { slot: StagingSlot; at: number; bytes: number } | null {
    if (unit > this.chunkBytes) {
      throw new HmmlabError(
        'EINVAL',
        `StagingRing: a unit of ${unit} bytes is more than a buffer's ${this.chunkBytes}`,
      );
    }
    for (;;) {
      this.gpu.checkAlive('StagingRing');
      if (this.slots.length === 0) this.addSlot(0);
      let s = this.slots[this.cur];
      if (s.ready) {
        if (this.slots.length < this.maxSlots) s = this.addSlot(this.cur);
        else return null;
      }
      const room = this.chunkBytes - s.used;
      if (room < unit) {
        this.submit(s);
        continue;
      }
      const bytes = Math.min(room - (room % unit), Math.max(unit, max - (max % unit)));
      const at = s.used;
      s.used += bytes;
      return { slot: s, at, bytes };
    }
  }

  /** Wait until the ring's next buffer is mapped again (tryReserve said null). */
  async whenFree(): Promise<void> {
    const s = this.slots[this.cur];
    if (!s?.ready) return;
    try {
      await s.ready;
    } catch (e) {
      // A buffer that could not be mapped again leaves the ring; a later write makes another.
      this.slots.splice(this.slots.indexOf(s), 1);
      this.cur = 0;
      if (s.buffer.mapState !== 'unmapped') s.buffer.unmap();
      s.buffer.destroy();
      throw e;
    }
  }

  /** The bytes at `srcOffset` of `slot` go to `dst` at `dstOffset` when the buffer is submitted. */
  addCopy(slot: StagingSlot, srcOffset: number, dst: GPUBuffer, dstOffset: number, bytes: number): void {
    const last = slot.copies[slot.copies.length - 1];
    if (
      last &&
      last.dst === dst &&
      last.srcOffset + last.bytes === srcOffset &&
      last.dstOffset + last.bytes === dstOffset
    ) {
      last.bytes += bytes; // a run that goes on in the same buffer: one copy
      return;
    }
    slot.copies.push({ srcOffset, dst, dstOffset, bytes });
  }

  /** Submit the current buffer's copies, if any: every later submit sees them (queue order). */
  flush(): void {
    const s = this.slots[this.cur];
    if (s && !s.ready && s.copies.length) this.submit(s);
  }

  /** Drop the copies not submitted yet into these buffers (they are being destroyed). */
  forget(buffers: readonly GPUBuffer[]): void {
    for (const s of this.slots) s.copies = s.copies.filter((c) => !buffers.includes(c.dst));
  }

  private submit(s: StagingSlot): void {
    s.buffer.unmap();
    s.view = null;
    if (s.copies.length) {
      const enc = this.gpu.device.createCommandEncoder({ label: 'staging-copy' });
      for (const c of s.copies) enc.copyBufferToBuffer(s.buffer, c.srcOffset, c.dst, c.dstOffset, c.bytes);
      this.gpu.device.queue.submit([enc.finish()]);
    }
    s.copies = [];
    s.used = 0;
    s.ready = quiet(
      this.gpu.map(s.buffer, GPUMapMode.WRITE).then(() => {
        s.view = new Uint8Array(s.buffer.getMappedRange());
        s.ready = null;
      }),
    );
    this.cur = (this.cur + 1) % this.slots.length;
  }

  /**
   * Copy `data` to `dst` at `dstOffset`. Resolves when every piece is submitted: later submits see
   * the data (queue order); drain() the device to know it has landed.
   */
  async write(dst: GPUBuffer, dstOffset: number, data: Uint8Array): Promise<void> {
    const n = data.byteLength;
    checkDeviceRange(dst, dstOffset, n, 'StagingRing.write');
    const span = deviceSpan(n);
    for (let off = 0; off < span; ) {
      const r = this.tryReserve(COPY_ALIGN, span - off);
      if (!r) {
        await this.whenFree();
        continue;
      }
      const view = r.slot.view!;
      const have = Math.max(0, Math.min(r.bytes, n - off));
      view.set(data.subarray(off, off + have), r.at);
      if (have < r.bytes) view.fill(0, r.at + have, r.at + r.bytes); // the tail word's padding
      this.addCopy(r.slot, r.at, dst, dstOffset + off, r.bytes);
      off += r.bytes;
    }
    this.flush();
  }

  destroy(): void {
    for (const s of this.slots) s.buffer.destroy();
    this.slots.length = 0;
  }
}

/** One piece of a read: at most a ring buffer's bytes, copied there by `encode`, copied out by `land`. */
export interface ReadPiece {
  bytes: number;
  encode(enc: GPUCommandEncoder, dst: GPUBuffer): void;
  land(mapped: Uint8Array): void;
}

/**
 * device -> host through a ring of MAP_READ buffers: each piece is encoded into a free buffer and
 * submitted, up to `buffers` in flight per read, and landed (mapped, copied out, unmapped) in order
 * while the later ones are in flight. Buffers are made as needed and kept.
 */
export class ReadbackRing {
  private readonly slots: { buffer: GPUBuffer; busy: boolean }[] = [];
  readonly chunkBytes: number;
  private readonly inFlight: number;

  constructor(
    private readonly gpu: GpuDevice,
    options: RingOptions = {},
  ) {
    this.inFlight = options.buffers ?? 4;
    this.chunkBytes = align(options.chunkBytes ?? 16 << 20, 8);
  }

  private acquire(): { buffer: GPUBuffer; busy: boolean } {
    let s = this.slots.find((x) => !x.busy);
    if (!s) {
      const buffer = this.gpu.createBuffer(
        `readback-${this.slots.length}`,
        this.chunkBytes,
        GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      );
      s = { buffer, busy: false };
      this.slots.push(s);
    }
    s.busy = true;
    return s;
  }

  /** Run pieces (each at most chunkBytes) through the ring, in order. */
  async run(pieces: Iterable<ReadPiece>): Promise<void> {
    const flying: { slot: { buffer: GPUBuffer; busy: boolean }; piece: ReadPiece; mapped: Promise<void> }[] =
      [];
    const land = async () => {
      const x = flying[0];
      await x.mapped;
      x.piece.land(
        new Uint8Array(x.slot.buffer.getMappedRange(0, align(x.piece.bytes, 8)), 0, x.piece.bytes),
      );
      flying.shift();
      x.slot.buffer.unmap();
      x.slot.busy = false;
    };
    try {
      for (const piece of pieces) {
        if (flying.length === this.inFlight) await land();
        this.gpu.checkAlive('ReadbackRing');
        const slot = this.acquire();
        const enc = this.gpu.device.createCommandEncoder({ label: 'readback-copy' });
        piece.encode(enc, slot.buffer);
        this.gpu.device.queue.submit([enc.finish()]);
        flying.push({
          slot,
          piece,
          mapped: quiet(this.gpu.map(slot.buffer, GPUMapMode.READ, 0, align(piece.bytes, 8))),
        });
      }
      while (flying.length) await land();
    } catch (e) {
      // Leave the ring usable: cancel or undo the maps still in flight.
      for (const x of flying) {
        if (x.slot.buffer.mapState !== 'unmapped') x.slot.buffer.unmap();
        x.slot.busy = false;
      }
      throw e;
    }
  }

  /** Read n bytes of `src` at `srcOffset` into `into` (or a new array); exactly n bytes are written. */
  async read(src: GPUBuffer, srcOffset: number, n: number, into?: Uint8Array): Promise<Uint8Array> {
    checkDeviceRange(src, srcOffset, n, 'ReadbackRing.read');
    const out = into ?? new Uint8Array(n);
    if (out.byteLength < n) {
      throw new HmmlabError('EINVAL', `ReadbackRing.read: ${n} bytes do not fit in ${out.byteLength}`);
    }
    const span = deviceSpan(n);
    const pieces: ReadPiece[] = [];
    for (let off = 0; off < span; off += this.chunkBytes) {
      const len = Math.min(this.chunkBytes, span - off);
      const at = off;
      pieces.push({
        bytes: len,
        encode: (enc, dst) => enc.copyBufferToBuffer(src, srcOffset + at, dst, 0, len),
        land: (mapped) => out.set(mapped.subarray(0, Math.min(len, n - at)), at),
      });
    }
    await this.run(pieces);
    return out;
  }

  destroy(): void {
    for (const s of this.slots) s.buffer.destroy();
    this.slots.length = 0;
  }
}

/** One-off host -> device through a staging ring of one buffer sized to the data. */
export async function writeDeviceStaged(
  gpu: GpuDevice,
  dst: GPUBuffer,
  dstOffset: number,
  data: Uint8Array,
): Promise<void> {
  checkDeviceRange(dst, dstOffset, data.byteLength, 'writeDeviceStaged');
  if (data.byteLength === 0) return;
  const ring = new StagingRing(gpu, {
    buffers: 1,
    chunkBytes: Math.min(deviceSpan(data.byteLength), 16 << 20),
  });
  try {
    await ring.write(dst, dstOffset, data);
    await gpu.drain('writeDeviceStaged');
  } finally {
    ring.destroy();
  }
}

/** One-off device -> host read through a ring sized to the request. */
export async function readDevice(
  gpu: GpuDevice,
  src: GPUBuffer,
  srcOffset: number,
  n: number,
  into?: Uint8Array,
): Promise<Uint8Array> {
  checkDeviceRange(src, srcOffset, n, 'readDevice');
  if (n === 0) return into ?? new Uint8Array(0);
  const ring = new ReadbackRing(gpu, { buffers: 2, chunkBytes: Math.min(deviceSpan(n), 16 << 20) });
  try {
    return await ring.read(src, srcOffset, n, into);
  } finally {
    ring.destroy();
  }
}
