/**
 * Batched copies between host pages and device frames: no per-page round trip where a batch serves.
 *
 *   host -> frames   sorted by frame, cut into runs of consecutive frames in one frame buffer; each
 *                    run is gathered into one plain buffer and written with one queue.writeBuffer
 *                    (this also bounces SharedArrayBuffer views, on which Dawn's writeBuffer crashes)
 *   frames -> host   one copyBufferToBuffer per run into one MAP_READ buffer, one mapAsync a batch
 */
import { HmmlabError } from '../errors.ts';
import type { GpuDevice } from '../gpu/device.ts';
import { injectedError } from '../inject/inject.ts';
import type { FramePool } from './frames.ts';

/** The bounce buffer of host -> device copies: at most this many bytes (or one page) a writeBuffer. */
export const COPY_BOUNCE_BYTES = 4 << 20;

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

function sortedDistinct(frames: number[], what: string): number[] {
  const sorted = [...frames].sort((a, b) => a - b);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i] === sorted[i - 1])
      throw new HmmlabError('EINVAL', `${what}: frame ${sorted[i]} named twice`);
  }
  return sorted;
}

/** Host pages -> frames, one writeBuffer per run. Returns the bytes queued. */
export function copyToFrames(
  gpu: GpuDevice,
  pool: FramePool,
  items: FrameWrite[],
): { bytes: number; runs: number } {
  if (items.length === 0) return { bytes: 0, runs: 0 };
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
  const byFrame = new Map(items.map((it) => [it.frame, it.data]));
  const frames = sortedDistinct(
    items.map((it) => it.frame),
    'copy to frames',
  );
  const runs = frameRuns(frames, pool.framesPerBuffer, pageSize);
  gpu.checkAlive('copy to device frames');
  // One plain bounce buffer for every copy of the pool: writeBuffer copies the data at the call,
  // so it is free again right after; a run longer than it goes in pieces of whole pages.
  const per = Math.max(1, Math.floor(COPY_BOUNCE_BYTES / pageSize));
  pool.bounce ??= new Uint8Array(per * pageSize);
  const plain = pool.bounce;
  for (const run of runs) {
    for (let k = 0; k < run.count; k += per) {
      const n = Math.min(per, run.count - k);
      plain.fill(0, 0, n * pageSize); // a short source (the page at EOF) leaves the rest zero
      for (let j = 0; j < n; j++) plain.set(byFrame.get(frames[run.first + k + j])!, j * pageSize);
      gpu.device.queue.writeBuffer(
        pool.buffers[run.bufferIndex],
        run.offset + k * pageSize,
        plain.buffer,
        0,
        n * pageSize,
      );
    }
  }
  return { bytes: frames.length * pageSize, runs: runs.length };
}

/** Frames -> host: a copy of each frame's page, in the order asked. One mapAsync for the batch. */
export async function copyFromFrames(
  gpu: GpuDevice,
  pool: FramePool,
  frames: number[],
  /** Fault injection: the map of the readback times out (the copy itself is submitted). */
  injectTimeout = false,
): Promise<{ pages: Uint8Array[]; bytes: number; runs: number }> {
  if (frames.length === 0) return { pages: [], bytes: 0, runs: 0 };
  for (const f of frames) pool.checkFrame(f);
  const { pageSize } = pool;
  const sorted = sortedDistinct(frames, 'copy from frames');
  const runs = frameRuns(sorted, pool.framesPerBuffer, pageSize);
  const staging = gpu.createBuffer(
    'frames-readback',
    sorted.length * pageSize,
    GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  );
  try {
    const enc = gpu.device.createCommandEncoder({ label: 'copy from frames' });
    for (const run of runs) {
      enc.copyBufferToBuffer(
        pool.buffers[run.bufferIndex],
        run.offset,
        staging,
        run.first * pageSize,
        run.count * pageSize,
      );
    }
    gpu.device.queue.submit([enc.finish()]);
    if (injectTimeout) {
      throw injectedError(
        'copy-from-device',
        new HmmlabError(
          'ETIMEDOUT',
          `mapAsync frames-readback: no answer from the GPU in ${gpu.timeoutMs} ms`,
        ),
      );
    }
    await gpu.map(staging, GPUMapMode.READ);
    const all = new Uint8Array(staging.getMappedRange());
    const at = new Map(sorted.map((f, i) => [f, i]));
    const pages = frames.map((f) => {
      const i = at.get(f)!;
      return all.slice(i * pageSize, (i + 1) * pageSize);
    });
    staging.unmap();
    return { pages, bytes: sorted.length * pageSize, runs: runs.length };
  } finally {
    staging.destroy();
  }
}
