/**
 * Shared set-up for the device-half tests: a real GPU, device memory, Kara's mirror policy and an
 * HmmFs over a fresh temp dir; the op-log byte pattern; byte comparisons; counter deltas; and what
 * the atomic kernel must leave behind.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'vitest';
import { DeviceMemory } from '../../src/device/index.ts';
import { HmmFs } from '../../src/fs/hmmfs.ts';
import { GpuDevice } from '../../src/gpu/device.ts';
import type { FaultInjector } from '../../src/inject/inject.ts';
import { patternBytes } from '../../src/oplog/pattern.ts';
import { firstDifference } from '../../src/oplog/replay.ts';
import { MirrorPolicy } from '../../src/policy/mirror.ts';

export { diskBytes } from '../fs/helpers.ts';
export { patternBytes as pattern };

/** A real device with a wall-clock limit on every wait: a hang fails the test instead of stalling it. */
export async function openGpu(timeoutMs = 20_000): Promise<GpuDevice> {
  const gpu = await GpuDevice.open();
  gpu.timeoutMs = timeoutMs;
  return gpu;
}

export interface MirrorOptions {
  pageSize: number;
  hostPages: number;
  devicePages: number;
  blocks?: number;
  batchSize?: number;
  /** Fault injection for the mount's files and device. */
  inject?: FaultInjector;
  /** An existing device memory to mount over (two mounts sharing one device). */
  dm?: DeviceMemory;
  /** Work a kernel launch covers at most (DeviceMemoryOptions.chunkBytes): small to span chunks. */
  chunkBytes?: number;
}

export interface MirrorLab {
  gpu: GpuDevice;
  dm: DeviceMemory;
  mirror: MirrorPolicy;
  fs: HmmFs;
  dir: string;
  /** Unmount (errors ignored: a lost device may refuse), free the device memory, remove the dir. */
  cleanup(): Promise<void>;
}

export async function mountMirror(gpu: GpuDevice, o: MirrorOptions): Promise<MirrorLab> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hmmlab-policy-'));
  const shared = o.dm !== undefined;
  const dm =
    o.dm ??
    (await DeviceMemory.create(gpu, {
      devicePages: o.devicePages,
      pageSize: o.pageSize,
      batchSize: o.batchSize ?? 256,
      chunkBytes: o.chunkBytes,
    }));
  const mirror = new MirrorPolicy(dm);
  const hfs = await HmmFs.mount({
    dir,
    pageSize: o.pageSize,
    hostPages: o.hostPages,
    blocks: o.blocks,
    policy: mirror,
    inject: o.inject,
  });
  return {
    gpu,
    dm,
    mirror,
    fs: hfs,
    dir,
    async cleanup() {
      await hfs.unmount().catch(() => {});
      if (!shared) dm.destroy();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Byte-exact comparison that names the first differing offset on failure. */
export function expectBytes(got: Uint8Array, want: Uint8Array, what: string): void {
  const d = firstDifference(got, want);
  expect(d, d < 0 ? what : `${what}: ${got.length} vs ${want.length} bytes, first difference at ${d}`).toBe(
    -1,
  );
}

/** A copy of a counter record, to take deltas against later. */
export function counters<T extends object>(c: T): Record<string, number> {
  return { ...(c as Record<string, number>) };
}

/** after - before for every numeric counter of `after`. */
export function delta(before: Record<string, number>, after: object): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(after)) if (typeof v === 'number') out[k] = v - (before[k] ?? 0);
  return out;
}

/**
 * What the atomic kernel leaves in each of `words` u32 words: logical thread i does `iters`
 * increments, the d-th on word (i * spread + d) mod words (shaders/atomic_inc.wgsl).
 */
export function atomicTotals(words: number, threads: number, iters: number): Uint32Array {
  const spread = Math.max(1, Math.floor(words / threads));
  const out = new Uint32Array(words);
  for (let i = 0; i < threads; i++) for (let d = 0; d < iters; d++) out[(i * spread + d) % words]++;
  return out;
}

/** Little-endian u32 words of a byte range. */
export function u32(bytes: Uint8Array): Uint32Array {
  return new Uint32Array(bytes.slice().buffer);
}
