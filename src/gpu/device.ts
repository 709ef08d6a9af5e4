/**
 * The lab's handle on one WebGPU device: creation with raised limits, error scopes that turn
 * validation and out-of-memory errors into HmmlabErrors, device loss, waits with a wall-clock
 * timeout (Dawn waits on llvmpipe have been seen to hang), and the buffer helpers every layer uses.
 *
 * The Dawn instance (`gpu`) is held here for as long as the device lives: if it is collected the
 * process crashes at the next submit (docs/webgpu-findings.md).
 */
import { errorMessage, HmmlabError } from '../errors.ts';
import {
  type AdapterInfo,
  type GpuOptions,
  gpuOptionsFromEnv,
  limitsToRequest,
  requestAdapter,
} from './adapter.ts';

export const DEFAULT_GPU_TIMEOUT_MS = 60_000;

/**
 * Optional features hmmlab asks for where the adapter has them: `subgroups` (the device MMU records
 * one fault per subgroup and page, as a GPU's TLB coalesces a warp's faults) and `timestamp-query`
 * (the GPU time of each launch in the fault-batch records). Without them the same paths run, slower
 * to record faults and timed by the host only.
 */
export const OPTIONAL_FEATURES = ['subgroups', 'timestamp-query'] as const;
export type OptionalFeature = (typeof OPTIONAL_FEATURES)[number];

/**
 * The plain buffer that shared memory is bounced through before queue.writeBuffer (Dawn crashes on
 * a view of a SharedArrayBuffer: docs/webgpu-findings.md). One for the process, reused: writeBuffer
 * has copied the data when it returns, and a fresh buffer a call costs more than the copy (first
 * touch of new memory). Pieces of at most BOUNCE_BYTES.
 */
export const BOUNCE_BYTES = 4 << 20;
let bounceBuffer: Uint8Array | undefined;

function bounce(n: number): Uint8Array {
  const want = Math.min(align(n, 4), BOUNCE_BYTES);
  if (!bounceBuffer || bounceBuffer.byteLength < want) bounceBuffer = new Uint8Array(want);
  return bounceBuffer;
}

/** Reject with ETIMEDOUT if `p` has not settled after `ms`. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new HmmlabError('ETIMEDOUT', `${what}: no answer from the GPU in ${ms} ms`)),
      ms,
    );
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

export class GpuDevice {
  readonly device: GPUDevice;
  readonly info: AdapterInfo;
  readonly limits: GPUSupportedLimits;
  /** Why the device was lost, once it has been. */
  lostReason: string | undefined;
  /** Uncaptured errors seen since the last check (also printed by Dawn; we keep them to throw). */
  private uncaptured: string[] = [];
  private readonly lostListeners = new Set<(reason: string) => void>();
  timeoutMs = DEFAULT_GPU_TIMEOUT_MS;

  private constructor(
    private readonly gpu: GPU,
    readonly adapter: GPUAdapter,
    device: GPUDevice,
    info: AdapterInfo,
  ) {
    this.device = device;
    this.info = info;
    this.limits = device.limits;
    device.addEventListener('uncapturederror', (ev) => {
      this.uncaptured.push((ev as GPUUncapturedErrorEvent).error.message);
    });
    void device.lost.then((lost) => {
      this.lostReason = lost.message || lost.reason || 'device lost';
      for (const fn of this.lostListeners) fn(this.lostReason);
    });
  }

  static async open(options: GpuOptions = {}): Promise<GpuDevice> {
    const opts = gpuOptionsFromEnv(options);
    const { gpu, adapter, info } = await requestAdapter(opts);
    const requiredLimits = limitsToRequest(adapter, opts.requiredLimits);
    const requiredFeatures = OPTIONAL_FEATURES.filter(
      (f) => adapter.features.has(f) && !opts.withoutFeatures?.includes(f),
    ) as GPUFeatureName[];
    let device: GPUDevice;
    try {
      device = await adapter.requestDevice({ requiredLimits, requiredFeatures, label: 'hmmlab' });
    } catch (e) {
      throw new HmmlabError(
        'EGPU',
        `requestDevice failed on ${info.description || info.device}: ${errorMessage(e)}`,
        {
          cause: e,
        },
      );
    }
    return new GpuDevice(gpu, adapter, device, info);
  }

  /** Whether the device was opened with an optional feature (OPTIONAL_FEATURES). */
  has(feature: OptionalFeature): boolean {
    return this.device.features.has(feature);
  }

  get lost(): boolean {
    return this.lostReason !== undefined;
  }

  onLost(fn: (reason: string) => void): () => void {
    this.lostListeners.add(fn);
    return () => this.lostListeners.delete(fn);
  }

  /** Throw EGPU if the device is gone. Every path that touches the GPU calls this first. */
  checkAlive(what: string): void {
    if (this.lostReason !== undefined)
      throw new HmmlabError('EGPU', `${what}: GPU device lost (${this.lostReason})`);
  }

  /**
   * Run `fn` inside validation and out-of-memory error scopes; a GPU error becomes an EGPU
   * HmmlabError naming `what`, instead of a line Dawn prints on stdout.
   */
  async scoped<T>(what: string, fn: () => T | Promise<T>): Promise<T> {
    this.checkAlive(what);
    const d = this.device;
    d.pushErrorScope('out-of-memory');
    d.pushErrorScope('validation');
    let result: T | undefined;
    let failure: { error: unknown } | undefined;
    try {
      result = await fn();
    } catch (error) {
      failure = { error };
    }
    // The scopes are popped whatever fn did; a GPU error explains a failure better than its symptom.
    const validation = await d.popErrorScope();
    const oom = await d.popErrorScope();
    const err = validation ?? oom;
    if (err) throw new HmmlabError('EGPU', `${what}: ${err.message}`);
    if (failure) throw failure.error;
    const pending = this.uncaptured.splice(0);
    if (pending.length) throw new HmmlabError('EGPU', `${what}: ${pending.join('; ')}`);
    return result as T;
  }

  /** Create a buffer, with a clear ELIMIT error when the size is over the device's limits. */
  createBuffer(label: string, size: number, usage: GPUBufferUsageFlags, mappedAtCreation = false): GPUBuffer {
    this.checkAlive(`createBuffer ${label}`);
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new HmmlabError('EINVAL', `buffer ${label}: size ${size} is not a positive integer`);
    }
    if (size > this.limits.maxBufferSize) {
      throw new HmmlabError(
        'ELIMIT',
        `buffer ${label}: ${size} bytes is over the device's maxBufferSize of ${this.limits.maxBufferSize}`,
      );
    }
    const padded = mappedAtCreation ? align(size, 4) : size;
    return this.device.createBuffer({ label, size: padded, usage, mappedAtCreation });
  }

  /** Wait until the queue has drained, with a timeout. */
  async drain(what = 'queue.onSubmittedWorkDone'): Promise<void> {
    this.checkAlive(what);
    await withTimeout(this.device.queue.onSubmittedWorkDone(), this.timeoutMs, what);
    this.checkAlive(what);
  }

  /** mapAsync with a timeout and a clear error when the device is lost meanwhile. */
  async map(buffer: GPUBuffer, mode: GPUMapModeFlags, offset?: number, size?: number): Promise<void> {
    const what = `mapAsync ${buffer.label}`;
    this.checkAlive(what);
    try {
      await withTimeout(buffer.mapAsync(mode, offset, size), this.timeoutMs, what);
    } catch (e) {
      if (e instanceof HmmlabError) throw e;
      this.checkAlive(what);
      throw new HmmlabError('EGPU', `${what}: ${errorMessage(e)}`, { cause: e });
    }
  }

  /**
   * queue.writeBuffer that is safe for shared memory, the one place hmmlab bounces it: Dawn crashes
   * on a view of a SharedArrayBuffer (docs/webgpu-findings.md), so such data goes through one
   * reused plain buffer, a piece at a time. A length that is not a multiple of 4 is padded with
   * zeros to its last word (writeBuffer moves whole words). Dawn has copied the data when this
   * returns; it reaches the buffer in queue order.
   */
  writeBuffer(dst: GPUBuffer, dstOffset: number, data: Uint8Array): void {
    this.checkAlive(`writeBuffer ${dst.label}`);
    const n = data.byteLength;
    const body = n - (n % 4);
    const queue = this.device.queue;
    if (!(data.buffer instanceof SharedArrayBuffer)) {
      if (body > 0) queue.writeBuffer(dst, dstOffset, data.buffer as ArrayBuffer, data.byteOffset, body);
    } else {
      const plain = bounce(body);
      for (let off = 0; off < body; off += plain.byteLength) {
        const len = Math.min(plain.byteLength, body - off);
        plain.set(data.subarray(off, off + len));
        queue.writeBuffer(dst, dstOffset + off, plain.buffer as ArrayBuffer, 0, len);
      }
    }
    if (body < n) {
      const tail = new Uint8Array(4);
      tail.set(data.subarray(body));
      queue.writeBuffer(dst, dstOffset + body, tail.buffer, 0, 4);
    }
  }

  /** Read `size` bytes of `src` at `offset` back to the host (copy into a MAP_READ buffer, map, copy out). */
  async readBuffer(src: GPUBuffer, offset: number, size: number, into?: Uint8Array): Promise<Uint8Array> {
    const padded = align(size, 4);
    const staging = this.createBuffer(
      `${src.label}-readback`,
      padded,
      GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    );
    try {
      const enc = this.device.createCommandEncoder({ label: 'readback' });
      enc.copyBufferToBuffer(src, offset, staging, 0, padded);
      this.device.queue.submit([enc.finish()]);
      await this.map(staging, GPUMapMode.READ);
      const out = into ?? new Uint8Array(size);
      out.set(new Uint8Array(staging.getMappedRange(), 0, size));
      staging.unmap();
      return out;
    } finally {
      staging.destroy();
    }
  }

  /** Destroy the device (what a hot-unplug or a test of device loss does). */
  destroy(): void {
    this.device.destroy();
  }

  /** The Dawn instance, for tests that need to prove it is held. */
  get instance(): GPU {
    return this.gpu;
  }
}

export function align(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}
