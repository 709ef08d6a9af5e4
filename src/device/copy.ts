/**
 * Copies between host pages and device frames, batched: no per-page round trip where a batch
 * serves, and no per-copy buffer.
 *
 *   host -> frames   sorted by frame and cut into runs of consecutive frames (frames.ts allocates
 *                    them contiguously where the page indices are); each run is copied straight from
 *                    the host pages into a persistent ring of MAP_WRITE staging buffers mapped ahead
 *                    of need (one copy on the host), then one copyBufferToBuffer per run into the
 *                    frame buffer, submitted a ring buffer at a time (`stage`, then `flush`). Or, where
 *                    the adapter measured it faster, one queue.writeBuffer per run (GpuDevice's bounce).
 *                    lavapipe writes a buffer that kernels write at ~0.3 GB/s by writeBuffer and at
 *                    several GB/s through the ring (docs/webgpu-findings.md): `chooseUploadPath`.
 *   frames -> host   one copyBufferToBuffer per run into a persistent ring of MAP_READ buffers (ReadbackRing), one
 *                    map a ring buffer, copied out straight into the caller's pages; the next piece's
 *                    map is in flight while one is copied out. A piece may carry a head (a PTE update
 *                    and its old PTEs, memory.ts `pull`) in the same submit and the same map.
 *
 * The rings belong to the GpuDevice (every DeviceMemory on it shares them: a test's hundred fresh
 * device memories do not each pay for first-touching new staging memory) and grow a buffer at a
 * time as the copies in flight need.
 */
import { HmmlabError } from '../errors.ts';
import { ReadbackRing, type ReadPiece, StagingRing } from '../gpu/copy.ts';
import { align, type GpuDevice } from '../gpu/device.ts';
import type { FramePool } from './frames.ts';

export interface FrameWrite {
  frame: number;
  /** At most a page; a shorter source (the page at EOF) leaves the rest of the frame zero. */
  data: Uint8Array;
}

export interface FrameRun {
  bufferIndex: number;
  offset: number;
  /** Positions in the sorted input that this run covers, in frame order. */
  first: number;
  count: number;
}

/** Cut frames (sorted ascending, distinct) into runs of consecutive frames within one buffer. */
export function frameRuns(frames: number[], framesPerBuffer: number, pageSize: number): FrameRun[] {
  const runs: FrameRun[] = [];
  for (let i = 0; i < frames.length; i++) {
    const f = frames[i];
    const bufferIndex = Math.floor(f / framesPerBuffer);
    const last = runs[runs.length - 1];
    if (last && last.bufferIndex === bufferIndex && frames[i - 1] === f - 1) {
      last.count++;
    } else {
      runs.push({ bufferIndex, offset: (f % framesPerBuffer) * pageSize, first: i, count: 1 });
    }
  }
  return runs;
}

/** Positions of `frames` sorted by frame; EINVAL if a frame is named twice. */
function sortedOrder(frames: readonly number[], what: string): number[] {
  const order = frames.map((_, i) => i);
  let ascending = true;
  for (let i = 1; i < frames.length && ascending; i++) ascending = frames[i] > frames[i - 1];
  if (ascending) return order; // the common case: frames allocated in runs, asked in page order
  order.sort((a, b) => frames[a] - frames[b]);
  for (let i = 1; i < order.length; i++) {
    if (frames[order[i]] === frames[order[i - 1]])
      throw new HmmlabError('EINVAL', `${what}: frame ${frames[order[i]]} named twice`);
  }
  return order;
}

/** Bytes a staging or readback ring buffer holds: a fault batch of 4 KiB pages, or two 2 MiB pages. */
export const RING_BUFFER_BYTES = 4 << 20;
/** Ring buffers in flight at most (upload), and per read (download). */
const UPLOAD_BUFFERS = 8;
const DOWNLOAD_IN_FLIGHT = 3;

/**
 * How many of the views view(0), view(1), ... (at most `n`) are whole pages that follow each other
 * in one buffer: so many pages are one copy. At least 1.
 */
function adjacent(n: number, view: (q: number) => Uint8Array, pageSize: number): number {
  const first = view(0);
  let m = 1;
  while (m < n) {
    const v = view(m);
    if (
      v.buffer !== first.buffer ||
      v.byteLength !== pageSize ||
      v.byteOffset !== first.byteOffset + m * pageSize
    )
      break;
    m++;
  }
  return m;
}

/** How host pages reach frames on this adapter: see chooseUploadPath. */
export type UploadPath = 'staging' | 'writeBuffer';

/** What a read of frames may carry in its first submit besides the pages: a PTE update (memory.ts). */
export interface ReadHead {
  /** Bytes the head takes at the start of the first ring buffer (its old PTEs). */
  bytes: number;
  encode(enc: GPUCommandEncoder, dst: GPUBuffer): void;
  land(mapped: Uint8Array): void;
}

/** The head's bytes rounded up, so the pages after it start on a 256-byte boundary. */
const HEAD_ALIGN = 256;

/** The copy machinery of one GpuDevice: its two rings and the upload path it measured. */
export class FrameCopier {
  private upload: StagingRing | undefined;
  private download: ReadbackRing | undefined;

  constructor(
    private readonly gpu: GpuDevice,
    readonly ringBytes = RING_BUFFER_BYTES,
  ) {}

  /**
   * Host pages -> frames, in runs; through the staging ring, the copies are recorded and submitted
   * a ring buffer at a time (the last one at `flush`); through writeBuffer they are queued at once.
   * Waits only for a staging buffer to be mapped again. Returns the bytes staged.
   */
  async stage(pool: FramePool, items: readonly FrameWrite[], path: UploadPath): Promise<number> {
    if (items.length === 0) return 0;
    const { pageSize } = pool;
    for (const it of items) {
      pool.checkFrame(it.frame);
      if (it.data.byteLength > pageSize) {
        throw new HmmlabError(
          'EINVAL',
          `copy to frame ${it.frame}: ${it.data.byteLength} bytes is more than a page`,
        );
      }
    }
    const frames = items.map((it) => it.frame);
    const order = sortedOrder(frames, 'copy to frames');
    const sorted = order.map((i) => frames[i]);
    const runs = frameRuns(sorted, pool.framesPerBuffer, pageSize);
    this.gpu.checkAlive('copy to device frames');
    if (path === 'writeBuffer') {
      // One writeBuffer per run, gathered in a plain buffer (GpuDevice bounces none of it then).
      const per = Math.max(1, Math.floor(this.ringBytes / pageSize));
      const plain = new Uint8Array(Math.min(per, Math.max(...runs.map((r) => r.count))) * pageSize);
      for (const run of runs) {
        for (let k = 0; k < run.count; k += per) {
          const n = Math.min(per, run.count - k);
          for (let j = 0; j < n; j++) {
            const d = items[order[run.first + k + j]].data;
            plain.set(d, j * pageSize);
            if (d.byteLength < pageSize) plain.fill(0, j * pageSize + d.byteLength, (j + 1) * pageSize);
          }
          this.gpu.writeBuffer(
            pool.buffers[run.bufferIndex],
            run.offset + k * pageSize,
            plain.subarray(0, n * pageSize),
          );
        }
      }
      return sorted.length * pageSize;
    }
    this.upload ??= new StagingRing(this.gpu, {
      buffers: UPLOAD_BUFFERS,
      chunkBytes: Math.max(this.ringBytes, pageSize),
    });
    const ring = this.upload;
    for (const run of runs) {
      for (let k = 0; k < run.count; ) {
        const r = ring.tryReserve(pageSize, (run.count - k) * pageSize);
        if (!r) {
          await ring.whenFree();
          continue;
        }
        const view = r.slot.view!;
        const n = r.bytes / pageSize;
        for (let j = 0; j < n; ) {
          const d = items[order[run.first + k + j]].data;
          const at = r.at + j * pageSize;
          // Host pages next to each other in one buffer (a pool's neighbouring slots) go in one copy.
          const m =
            d.byteLength === pageSize
              ? adjacent(n - j, (q) => items[order[run.first + k + j + q]].data, pageSize)
              : 1;
          view.set(m > 1 ? new Uint8Array(d.buffer, d.byteOffset, m * pageSize) : d, at);
          if (d.byteLength < pageSize) view.fill(0, at + d.byteLength, at + pageSize);
          j += m;
        }
        ring.addCopy(r.slot, r.at, pool.buffers[run.bufferIndex], run.offset + k * pageSize, r.bytes);
        k += n;
      }
    }
    return sorted.length * pageSize;
  }

  /** Submit the staged copies not submitted yet: every later submit sees them (queue order). */
  flush(): void {
    this.upload?.flush();
  }

  /** Forget staged copies into a pool that is going away. */
  forget(pool: FramePool): void {
    this.upload?.forget(pool.buffers);
  }

  /**
   * Frames -> host: each frame's page copied into `into[i]` (a page-sized view, e.g. the host page
   * itself) or into a new array, in the order asked. `head` rides in the first submit (its bytes
   * land first); `failAfterHead` makes the read fail once the head landed and before any page is
   * copied out (fault injection: the map of the readback timed out). Staged uploads are submitted
   * first, so the read sees them.
   */
  async read(
    pool: FramePool,
    frames: readonly number[],
    opts: { into?: readonly (Uint8Array | undefined)[]; head?: ReadHead; failAfterHead?: () => never } = {},
  ): Promise<Uint8Array[]> {
    for (const f of frames) pool.checkFrame(f);
    const { pageSize } = pool;
    const order = sortedOrder(frames, 'copy from frames');
    const sorted = order.map((i) => frames[i]);
    const runs = frameRuns(sorted, pool.framesPerBuffer, pageSize);
    const out: Uint8Array[] = new Array(frames.length);
    for (let i = 0; i < frames.length; i++) {
      const t = opts.into?.[i];
      if (t && t.byteLength < pageSize) {
        throw new HmmlabError(
          'EINVAL',
          `copy from frame ${frames[i]}: ${t.byteLength} bytes is less than a page`,
        );
      }
      out[i] = t ?? new Uint8Array(pageSize);
    }
    this.flush();
    this.download ??= new ReadbackRing(this.gpu, {
      buffers: DOWNLOAD_IN_FLIGHT,
      chunkBytes: Math.max(this.ringBytes, pageSize),
    });
    const slotBytes = this.download.chunkBytes;
    const head = opts.head;
    const headBytes = head ? align(head.bytes, HEAD_ALIGN) : 0;
    if (headBytes + pageSize > slotBytes && frames.length) {
      throw new HmmlabError(
        'EINVAL',
        `copy from frames: a head of ${head!.bytes} bytes leaves no room for a page`,
      );
    }
    // Pieces: whole pages of runs, each at most a ring buffer (less the head's room in the first).
    const pieces: ReadPiece[] = [];
    let cur: { parts: { run: FrameRun; k: number; n: number; at: number }[]; bytes: number; first: boolean } =
      {
        parts: [],
        bytes: headBytes,
        first: true,
      };
    const close = () => {
      const p = cur;
      if (!p.first && p.parts.length === 0) return;
      pieces.push({
        bytes: p.bytes,
        encode: (enc, dst) => {
          if (p.first && head) head.encode(enc, dst);
          for (const part of p.parts) {
            enc.copyBufferToBuffer(
              pool.buffers[part.run.bufferIndex],
              part.run.offset + part.k * pageSize,
              dst,
              part.at,
              part.n * pageSize,
            );
          }
        },
        land: (mapped) => {
          if (p.first && head) head.land(mapped.subarray(0, head.bytes));
          if (p.first && opts.failAfterHead && frames.length) opts.failAfterHead();
          for (const part of p.parts) {
            const target = (q: number) => out[order[part.run.first + part.k + q]];
            for (let j = 0; j < part.n; ) {
              const at = part.at + j * pageSize;
              const t = target(j);
              const m = adjacent(part.n - j, (q) => target(j + q), pageSize);
              if (m > 1)
                new Uint8Array(t.buffer, t.byteOffset, m * pageSize).set(
                  mapped.subarray(at, at + m * pageSize),
                );
              else t.set(mapped.subarray(at, at + pageSize));
              j += m;
            }
          }
        },
      });
      cur = { parts: [], bytes: 0, first: false };
    };
    for (const run of runs) {
      for (let k = 0; k < run.count; ) {
        let room = Math.floor((slotBytes - cur.bytes) / pageSize);
        if (room === 0) {
          close();
          room = Math.floor(slotBytes / pageSize);
        }
        const n = Math.min(room, run.count - k);
        cur.parts.push({ run, k, n, at: cur.bytes });
        cur.bytes += n * pageSize;
        k += n;
      }
    }
    close();
    if (pieces.length) await this.download.run(pieces);
    return out;
  }

  destroy(): void {
    this.upload?.destroy();
    this.download?.destroy();
    this.upload = undefined;
    this.download = undefined;
  }
}

const copiers = new WeakMap<GpuDevice, FrameCopier>();

/** The GpuDevice's copier (made at the first use). */
export function frameCopier(gpu: GpuDevice): FrameCopier {
  let c = copiers.get(gpu);
  if (!c) {
    c = new FrameCopier(gpu);
    copiers.set(gpu, c);
  }
  return c;
}

const measured = new WeakMap<GpuDevice, Promise<UploadMeasure>>();

/** What chooseUploadPath measured: GB/s of each path into a buffer a GPU command has written. */
export interface UploadMeasure {
  path: UploadPath;
  staging: number;
  writeBuffer: number;
  bytes: number;
}

/** Bytes each path copies when measured: enough to see the rate, little enough for a test's device. */
const MEASURE_BYTES = 1 << 20;

/**
 * The faster way host pages reach frames on this adapter, measured once per GpuDevice into a
 * buffer that a GPU command has written (as kernels write frames): lavapipe's writeBuffer into
 * such a buffer runs at ~0.3 GB/s and its staging ring at several GB/s; a hardware GPU may differ.
 * Each path copies MEASURE_BYTES of shared memory (the page pool is a SharedArrayBuffer) twice,
 * warm-up first; the better median of three wins.
 */
export function chooseUploadPath(gpu: GpuDevice): Promise<UploadMeasure> {
  let m = measured.get(gpu);
  if (!m) {
    m = measureUpload(gpu);
    measured.set(gpu, m);
    m.catch(() => measured.delete(gpu));
  }
  return m;
}

async function measureUpload(gpu: GpuDevice): Promise<UploadMeasure> {
  const pageSize = 4096;
  const pages = MEASURE_BYTES / pageSize;
  const buffer = gpu.createBuffer(
    'upload-measure',
    MEASURE_BYTES,
    GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
  );
  const host = new Uint8Array(new SharedArrayBuffer(MEASURE_BYTES));
  const pool = {
    pageSize,
    framesPerBuffer: pages,
    buffers: [buffer],
    checkFrame: () => {},
  } as unknown as FramePool;
  const items = Array.from({ length: pages }, (_, i) => ({
    frame: i,
    data: host.subarray(i * pageSize, (i + 1) * pageSize),
  }));
  const copier = frameCopier(gpu);
  try {
    const enc = gpu.device.createCommandEncoder({ label: 'upload-measure clear' });
    enc.clearBuffer(buffer); // a GPU command has written it, as kernels write frames
    gpu.device.queue.submit([enc.finish()]);
    await gpu.drain('measure the upload paths');
    const rate = async (path: UploadPath) => {
      const times: number[] = [];
      for (let i = 0; i < 4; i++) {
        const t0 = performance.now();
        await copier.stage(pool, items, path);
        copier.flush();
        await gpu.drain('measure the upload paths');
        if (i > 0) times.push(performance.now() - t0);
      }
      times.sort((a, b) => a - b);
      return MEASURE_BYTES / (times[1] * 1e6);
    };
    const staging = await rate('staging');
    const writeBuffer = await rate('writeBuffer');
    return {
      path: writeBuffer > staging ? 'writeBuffer' : 'staging',
      staging,
      writeBuffer,
      bytes: MEASURE_BYTES,
    };
  } finally {
    buffer.destroy();
  }
}
