/**
 * The coherence policy a command mounts with, set up in one place for replay, stress and the demo:
 * `parsePolicy` reads --policy, `openPolicy` opens what the policy needs once (the GPU for mirror;
 * nothing for none) and hands out a fresh policy instance for each mount (`forMount`: fresh device
 * memory, so that runs and shrinking replays do not share frames). The names and the policies
 * themselves are src/policy/registry.ts's, the one place a name becomes a policy.
 *
 * The GPU modules are loaded only when a policy needs them, so that host-only commands need no GPU.
 */
import type { Command } from 'commander';
import type { DeviceMemory } from '../device/index.ts';
import type { ReplayPolicy } from '../device/replayPolicy.ts';
import type { FaultBatchRecord } from '../device/stats.ts';
import type { GpuOptions } from '../gpu/adapter.ts';
import type { GpuDevice } from '../gpu/device.ts';
import type { CoherencePolicy } from '../policy/policy.ts';
import {
  isDevicePolicyName,
  POLICY_HELP,
  POLICY_NAMES,
  type PolicyName,
  parsePolicyName,
} from '../policy/registry.ts';

export { POLICY_HELP, POLICY_NAMES, type PolicyName };

/** --policy NAME, or EINVAL naming the choices (the names are src/policy/registry.ts's). */
export function parsePolicy(text: string | undefined, fallback: PolicyName = 'mirror'): PolicyName {
  return parsePolicyName(text ?? fallback);
}

/** Does the policy run device ops (devread, devwrite)? */
export const policyHasDevice = (name: PolicyName): boolean => isDevicePolicyName(name);

export interface PolicyOptions {
  /** An open GPU to use (the demo's); else one is opened with `gpuOptions` and closed by close(). */
  gpu?: GpuDevice;
  gpuOptions?: GpuOptions;
  devicePages: number;
  pageSize: number;
  batch: number;
  /** When device faults are replayed (UVM's replay policies; default once). */
  replayPolicy?: ReplayPolicy;
}

/** The policy of one mount, and what it holds. */
export interface MountPolicy {
  /** The policy to mount with; undefined for the host-only page cache (HmmFs's default). */
  policy?: CoherencePolicy;
  /** The device memory behind it (null without a device). */
  device: DeviceMemory | null;
  /** The device's fault batches, in time order (empty without a device). */
  batchLog: readonly FaultBatchRecord[];
  /** Free what the mount's policy holds (its device memory). */
  close(): void;
}

export interface PolicyHost {
  name: PolicyName;
  /** The GPU (null for a host-only policy). */
  gpu: GpuDevice | null;
  /** A fresh policy instance for one mount. */
  forMount(): Promise<MountPolicy>;
  /** Close what openPolicy opened (the GPU, unless the caller gave it). */
  close(): void;
}

const HOST_ONLY: MountPolicy = { device: null, batchLog: [], close: () => {} };

export async function openPolicy(name: PolicyName, o: PolicyOptions): Promise<PolicyHost> {
  if (!policyHasDevice(name)) {
    return { name, gpu: null, forMount: async () => HOST_ONLY, close: () => {} };
  }
  const [{ GpuDevice }, registry] = await Promise.all([
    import('../gpu/device.ts'),
    import('../policy/registry.ts'),
  ]);
  const owned = o.gpu === undefined;
  const gpu = o.gpu ?? (await GpuDevice.open(o.gpuOptions ?? {}));
  return {
    name,
    gpu,
    forMount: async () => {
      const held = await registry.openPolicy(name, gpu, {
        devicePages: o.devicePages,
        pageSize: o.pageSize,
        batchSize: o.batch,
        replayPolicy: o.replayPolicy,
      });
      const dm = held.dm!;
      return { policy: held.policy, device: dm, batchLog: dm.batchLog, close: () => held.close() };
    },
    close: () => {
      if (owned) gpu.destroy();
    },
  };
}

/**
 * openPolicy as replay, stress and stress --concurrent open it: the command's GPU options
 * (--adapter, --backend) and its device budget (--device-pages, --page-size, --batch).
 */
export async function openCommandPolicy(
  cmd: Command,
  name: PolicyName,
  o: { devicePages: number; pageSize: number; batch: number; replayPolicy?: ReplayPolicy },
): Promise<PolicyHost> {
  const { gpuOptionsOf } = await import('./info.ts');
  const { devicePages, pageSize, batch, replayPolicy } = o; // only these: callers pass their whole parsed options
  return openPolicy(name, { gpuOptions: gpuOptionsOf(cmd), devicePages, pageSize, batch, replayPolicy });
}
