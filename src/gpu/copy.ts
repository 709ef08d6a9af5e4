/**
 * The copy paths between host memory and GPU buffers, as reusable functions on a GpuDevice. The
 * page cache copies pages A -> A' and A' -> A with the fastest of them; `hmmlab bench copy`
 * measures each one.
 *
 *   host -> device   writeDevice        queue.writeBuffer (Dawn copies the data at the call)
 *   host -> device   StagingRing.write  a ring of MAP_WRITE buffers + copyBufferToBuffer; each buffer
 *                                       is re-mapped once its copy is submitted (docs/webgpu-findings.md)
 *   device -> host   ReadbackRing.read  copyBufferToBuffer into a ring of MAP_READ buffers + mapAsync
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

function isShared(data: ArrayBufferView): boolean {
  return typeof SharedArrayBuffer !== 'undefined' && data.buffer instanceof SharedArrayBuffer;
}

/** Largest piece of shared memory bounced through one plain buffer per writeBuffer. */
const BOUNCE_BYTES = 4 << 20;
let bounceBuffer: Uint8Array | undefined;

/**
 * The plain buffer shared memory is bounced through, reused: writeBuffer has copied the data when
 * it returns, and a fresh buffer per call costs more than the copy (first touch of new memory).
 */
function bounce(n: number): Uint8Array {
  if (!bounceBuffer || bounceBuffer.byteLength < Math.min(n, BOUNCE_BYTES)) {
    bounceBuffer = new Uint8Array(Math.min(align(n, COPY_ALIGN), BOUNCE_BYTES));
  }
  return bounceBuffer;
}

/**
 * host -> device by queue.writeBuffer. Dawn has copied `data` when this returns, so the caller may
 * reuse it at once; the copy reaches the buffer in queue order (before any later submit).
 */
export function writeDevice(gpu: GpuDevice, dst: GPUBuffer, dstOffset: number, data: Uint8Array): void {
  const n = data.byteLength;
  checkDeviceRange(dst, dstOffset, n, 'writeDevice');
  gpu.checkAlive(`writeDevice ${dst.label}`);
  if (n === 0) return;
  const queue = gpu.device.queue;
  const body = n - (n % COPY_ALIGN);
  if (!isShared(data)) {
    if (body > 0) queue.writeBuffer(dst, dstOffset, data.buffer as ArrayBuffer, data.byteOffset, body);
  } else {
    const plain = bounce(body);
    for (let off = 0; off < body; off += plain.byteLength) {
      const len = Math.min(plain.byteLength, body - off);
      plain.set(data.subarray(off, off + len));
      queue.writeBuffer(dst, dstOffset + off, plain.buffer, 0, len);
    }
  }
  if (body < n) {
    // The unaligned tail: its last word, padded with zeros.
    const tail = new Uint8Array(COPY_ALIGN);
    tail.set(data.subarray(body));
    queue.writeBuffer(dst, dstOffset + body, tail.buffer, 0, COPY_ALIGN);
  }
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
  /** Buffers in the ring (copies in flight). */
  buffers?: number;
  /** Bytes per buffer: larger requests are split into pieces of this size. */
  chunkBytes?: number;
}

interface Slot {
  buffer: GPUBuffer;
  /** Settles when the buffer is mapped again (staging) or the pending readback has landed. */
  ready: Promise<void> | undefined;
}

/** A promise whose rejection is handled here and re-raised only where it is awaited. */
function quiet(p: Promise<void>): Promise<void> {
  p.catch(() => {});
  return p;
}

/**
 * host -> device through a ring of mapped staging buffers. Each piece is set into the next mapped
 * buffer, unmapped, copied by copyBufferToBuffer, and the buffer is re-mapped at once: the map
 * resolves when its copy is done, so up to `buffers` copies are in flight and no buffer is created
 * per write (creating buffers is what makes mappedAtCreation-per-write slow).
 */
export class StagingRing {
  private readonly slots: Slot[];
  private next = 0;
  readonly chunkBytes: number;

  constructor(
    private readonly gpu: GpuDevice,
    options: RingOptions = {},
  ) {
    const count = options.buffers ?? 8;
    this.chunkBytes = align(options.chunkBytes ?? 4 << 20, 8);
    this.slots = Array.from({ length: count }, (_, i) => ({
      buffer: gpu.createBuffer(
        `staging-${i}`,
        this.chunkBytes,
        GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC,
        true,
      ),
      ready: undefined,
    }));
  }

  /**
   * Copy `data` to `dst` at `dstOffset`. Resolves when every piece is submitted: later submits see
   * the data (queue order); drain() the device to know it has landed.
   */
  async write(dst: GPUBuffer, dstOffset: number, data: Uint8Array): Promise<void> {
    const n = data.byteLength;
    checkDeviceRange(dst, dstOffset, n, 'StagingRing.write');
    const span = deviceSpan(n);
    for (let off = 0; off < span; off += this.chunkBytes) {
      const len = Math.min(this.chunkBytes, span - off);
      const slot = this.slots[this.next];
      this.next = (this.next + 1) % this.slots.length;
      if (slot.ready) {
        const ready = slot.ready;
        slot.ready = undefined;
        await ready;
      }
      this.gpu.checkAlive(`StagingRing.write ${dst.label}`);
      const mapped = new Uint8Array(slot.buffer.getMappedRange(0, len));
      const have = Math.min(len, n - off);
      mapped.set(data.subarray(off, off + have));
      if (have < len) mapped.fill(0, have); // the tail word's padding
      slot.buffer.unmap();
      const enc = this.gpu.device.createCommandEncoder({ label: 'staging-copy' });
      enc.copyBufferToBuffer(slot.buffer, 0, dst, dstOffset + off, len);
      this.gpu.device.queue.submit([enc.finish()]);
      slot.ready = quiet(this.gpu.map(slot.buffer, GPUMapMode.WRITE));
    }
  }

  destroy(): void {
    for (const slot of this.slots) slot.buffer.destroy();
  }
}

/**
 * device -> host through a ring of MAP_READ buffers: pieces are copied into the ring, and each is
 * mapped, copied out and unmapped in order while the later pieces are still in flight.
 */
export class ReadbackRing {
  private readonly slots: Slot[];
  readonly chunkBytes: number;

  constructor(
    private readonly gpu: GpuDevice,
    options: RingOptions = {},
  ) {
    const count = options.buffers ?? 4;
    this.chunkBytes = align(options.chunkBytes ?? 16 << 20, 8);
    this.slots = Array.from({ length: count }, (_, i) => ({
      buffer: gpu.createBuffer(
        `readback-${i}`,
        this.chunkBytes,
        GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      ),
      ready: undefined,
    }));
  }

  /** Read n bytes of `src` at `srcOffset` into `into` (or a new array); exactly n bytes are written. */
  async read(src: GPUBuffer, srcOffset: number, n: number, into?: Uint8Array): Promise<Uint8Array> {
    checkDeviceRange(src, srcOffset, n, 'ReadbackRing.read');
    const out = into ?? new Uint8Array(n);
    if (out.byteLength < n) {
      throw new HmmlabError('EINVAL', `ReadbackRing.read: ${n} bytes do not fit in ${out.byteLength}`);
    }
    const span = deviceSpan(n);
    const inFlight: { slot: Slot; off: number; len: number }[] = [];
    const land = async () => {
      const piece = inFlight.shift()!;
      await piece.slot.ready;
      const have = Math.min(piece.len, n - piece.off);
      out.set(new Uint8Array(piece.slot.buffer.getMappedRange(0, piece.len), 0, have), piece.off);
      piece.slot.buffer.unmap();
      piece.slot.ready = undefined;
    };
    try {
      for (let off = 0, i = 0; off < span; off += this.chunkBytes, i++) {
        if (inFlight.length === this.slots.length) await land();
        const slot = this.slots[i % this.slots.length];
        const len = Math.min(this.chunkBytes, span - off);
        this.gpu.checkAlive(`ReadbackRing.read ${src.label}`);
        const enc = this.gpu.device.createCommandEncoder({ label: 'readback-copy' });
        enc.copyBufferToBuffer(src, srcOffset + off, slot.buffer, 0, len);
        this.gpu.device.queue.submit([enc.finish()]);
        slot.ready = quiet(this.gpu.map(slot.buffer, GPUMapMode.READ, 0, len));
        inFlight.push({ slot, off, len });
      }
      while (inFlight.length) await land();
    } catch (e) {
      // Leave the ring usable: cancel or undo the maps of the pieces still in flight.
      for (const piece of inFlight) {
        if (piece.slot.buffer.mapState !== 'unmapped') piece.slot.buffer.unmap();
        piece.slot.ready = undefined;
      }
      throw e;
    }
    return out;
  }

  destroy(): void {
    for (const slot of this.slots) slot.buffer.destroy();
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
