/**
 * The coherence policy a command mounts with, set up in one place for replay, stress and the demo:
 * `parsePolicy` reads --policy, `openPolicy` opens what the policy needs once (the GPU for mirror;
 * nothing for none) and hands out a fresh policy instance for each mount (`forMount`: fresh device
 * memory, so that runs and shrinking replays do not share frames). A new policy (Glisse's migrate)
 * is one more name and one more case here.
 *
 * The GPU modules are loaded only when a policy needs them, so that host-only commands need no GPU.
 */
import type { DeviceMemory } from '../device/index.ts';
import type { FaultBatchRecord } from '../device/stats.ts';
import { HmmlabError } from '../errors.ts';
import type { GpuOptions } from '../gpu/adapter.ts';
import type { GpuDevice } from '../gpu/device.ts';
import type { CoherencePolicy } from '../policy/policy.ts';

export const POLICY_NAMES = ['mirror', 'none'] as const;
export type PolicyName = (typeof POLICY_NAMES)[number];

/** What --help says of --policy. */
export const POLICY_HELP = "coherence policy: 'mirror' (Kara's scheme on the GPU) or 'none' (host only)";

/** --policy NAME, or EINVAL naming the choices. */
export function parsePolicy(text: string | undefined, fallback: PolicyName = 'mirror'): PolicyName {
  const name = text ?? fallback;
  if (!(POLICY_NAMES as readonly string[]).includes(name)) {
    throw new HmmlabError(
      'EINVAL',
      `bad --policy "${name}": expected ${POLICY_NAMES.map((p) => `'${p}'`).join(' or ')}`,
    );
  }
  return name as PolicyName;
}

/** Does the policy run device ops (devread, devwrite)? */
export const policyHasDevice = (name: PolicyName): boolean => name === 'mirror';

export interface PolicyOptions {
  /** An open GPU to use (the demo's); else one is opened with `gpuOptions` and closed by close(). */
  gpu?: GpuDevice;
  gpuOptions?: GpuOptions;
  devicePages: number;
  pageSize: number;
  batch: number;
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
  const [{ GpuDevice }, { DeviceMemory }, { MirrorPolicy }] = await Promise.all([
    import('../gpu/device.ts'),
    import('../device/index.ts'),
    import('../policy/mirror.ts'),
  ]);
  const owned = o.gpu === undefined;
  const gpu = o.gpu ?? (await GpuDevice.open(o.gpuOptions ?? {}));
  return {
    name,
    gpu,
    forMount: async () => {
      const dm = await DeviceMemory.create(gpu, {
        devicePages: o.devicePages,
        pageSize: o.pageSize,
        batchSize: o.batch,
      });
      return { policy: new MirrorPolicy(dm), device: dm, batchLog: dm.batchLog, close: () => dm.destroy() };
    },
    close: () => {
      if (owned) gpu.destroy();
    },
  };
}
