/**
 * Shared set-up for the device-half tests: a real GPU, device memory, a device policy (Kara's mirror
 * or Glisse's migrate, by name through src/policy/registry.ts) and an HmmFs over a fresh temp dir;
 * the op-log byte pattern; byte comparisons; counter deltas; and what the atomic kernel must leave
 * behind. `POLICIES` is the policy axis of the device test matrix (policy x page size).
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
import type { DevicePolicy } from '../../src/policy/device.ts';
import { createDevicePolicy, DEVICE_POLICY_NAMES, type DevicePolicyName } from '../../src/policy/registry.ts';

export { diskBytes } from '../fs/helpers.ts';
export { patternBytes as pattern };

/** A real device with a wall-clock limit on every wait: a hang fails the test instead of stalling it. */
export async function openGpu(timeoutMs = 20_000): Promise<GpuDevice> {
  const gpu = await GpuDevice.open();
  gpu.timeoutMs = timeoutMs;
  return gpu;
}

/** The device policies every device test runs under. */
export const POLICIES: readonly DevicePolicyName[] = DEVICE_POLICY_NAMES;
export type { DevicePolicyName };

/** The device test matrix: every policy x page sizes 4 KiB and 64 KiB, for describe.each. */
export const MATRIX = POLICIES.flatMap((policy) =>
  [4096, 65536].map((pageSize) => [policy, pageSize] as const),
);

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

export interface DeviceOptions extends MirrorOptions {
  /** The policy (default mirror). */
  policy?: DevicePolicyName;
}

export interface DeviceLab {
  gpu: GpuDevice;
  dm: DeviceMemory;
  /** The policy's name and the policy. */
  name: DevicePolicyName;
  policy: DevicePolicy;
  fs: HmmFs;
  dir: string;
  /** Unmount (errors ignored: a lost device may refuse), free the device memory, remove the dir. */
  cleanup(): Promise<void>;
}

/** A mirror mount (the policy of most device tests before migrate; mountDevice names one). */
export type MirrorLab = DeviceLab;
export const mountMirror = (gpu: GpuDevice, o: MirrorOptions): Promise<DeviceLab> =>
  mountDevice(gpu, { ...o, policy: 'mirror' });

export async function mountDevice(gpu: GpuDevice, o: DeviceOptions): Promise<DeviceLab> {
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
  const name = o.policy ?? 'mirror';
  const policy = createDevicePolicy(name, dm);
  const hfs = await HmmFs.mount({
    dir,
    pageSize: o.pageSize,
    hostPages: o.hostPages,
    blocks: o.blocks,
    policy,
    inject: o.inject,
  });
  return {
    gpu,
    dm,
    name,
    policy,
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
