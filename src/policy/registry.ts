/**
 * The one place a policy name becomes a policy: `--policy NAME` of replay, stress, demo and compare
 * (and the tests) all come here. 'mirror' is Jan Kara's scheme, 'migrate' Jérôme Glisse's, both
 * over a DeviceMemory (a GPU); 'none' is the host-only page cache (no GPU, device ops refused).
 */
import { DeviceMemory, type DeviceMemoryOptions } from '../device/index.ts';
import { HmmlabError } from '../errors.ts';
import type { GpuDevice } from '../gpu/device.ts';
import type { DevicePolicy } from './device.ts';
import { MigratePolicy } from './migrate.ts';
import { MirrorPolicy } from './mirror.ts';
import { type CoherencePolicy, hostOnlyPolicy } from './policy.ts';

/** The policies with a device, in the order the CLI lists them. */
export const DEVICE_POLICY_NAMES = ['mirror', 'migrate'] as const;
export type DevicePolicyName = (typeof DEVICE_POLICY_NAMES)[number];

/** Every policy name `--policy` takes. */
export const POLICY_NAMES = [...DEVICE_POLICY_NAMES, 'none'] as const;
export type PolicyName = (typeof POLICY_NAMES)[number];

/** One line for --help: each name and what it is. */
export const POLICY_HELP =
  "coherence policy: 'mirror' (Kara's scheme on the GPU: the page stays, the device gets a copy), " +
  "'migrate' (Glisse's: the page moves to the device, read/write bounce) or 'none' (host only)";

export function isDevicePolicyName(name: string): name is DevicePolicyName {
  return (DEVICE_POLICY_NAMES as readonly string[]).includes(name);
}

/** `name` as a policy name; EINVAL naming the option and the names there are. */
export function parsePolicyName(name: string, option = '--policy'): PolicyName {
  if ((POLICY_NAMES as readonly string[]).includes(name)) return name as PolicyName;
  const list = POLICY_NAMES.map((n) => `'${n}'`).join(', ');
  throw new HmmlabError('EINVAL', `bad ${option} "${name}": expected one of ${list}`);
}

/** The device policy `name` over device memory `dm`. */
export function createDevicePolicy(name: DevicePolicyName, dm: DeviceMemory): DevicePolicy {
  switch (name) {
    case 'mirror':
      return new MirrorPolicy(dm);
    case 'migrate':
      return new MigratePolicy(dm);
  }
}

/** A policy and what it holds on the GPU (freed by close; the GpuDevice stays the caller's). */
export interface OpenedPolicy {
  name: PolicyName;
  policy: CoherencePolicy;
  /** The device memory of a device policy; null for 'none'. */
  dm: DeviceMemory | null;
  close(): void;
}

/**
 * Policy `name`, with fresh device memory on `gpu` for a device policy (set up as `opts` says).
 * 'none' needs no GPU.
 */
export async function openPolicy(
  name: PolicyName,
  gpu: GpuDevice | null,
  opts: DeviceMemoryOptions,
): Promise<OpenedPolicy> {
  if (!isDevicePolicyName(name)) return { name, policy: hostOnlyPolicy, dm: null, close: () => {} };
  if (!gpu) throw new HmmlabError('ENODEV', `policy ${name} needs a GPU`);
  const dm = await DeviceMemory.create(gpu, opts);
  return { name, policy: createDevicePolicy(name, dm), dm, close: () => dm.destroy() };
}
