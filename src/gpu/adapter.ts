/**
 * Adapter choice and device creation.
 *
 * A hardware adapter is preferred; the software one (Mesa's lavapipe) is the fallback. The user
 * may name an adapter (a substring of its name, as Dawn matches it) or a backend, by option or
 * by the environment (HMMLAB_ADAPTER, HMMLAB_BACKEND). The device is requested with the limits the
 * lab needs raised to what the adapter allows.
 */
import { create, globals } from 'webgpu';
import { errorMessage, HmmlabError } from '../errors.ts';

// GPUBufferUsage, GPUMapMode, GPUShaderStage... are globals in a browser; dawn.node exports them.
Object.assign(globalThis, globals);

export interface GpuOptions {
  /** Substring of the adapter name, as Dawn's `adapter=` option matches it. */
  adapter?: string;
  /** Dawn backend: vulkan, metal, d3d12, opengl, opengles, null. */
  backend?: string;
  /** Prefer the software adapter even where hardware exists. */
  software?: boolean;
  /** Limits to request below the adapter's maximum (tests use this to provoke ELIMIT). */
  requiredLimits?: Record<string, number>;
  /** Optional features not to ask for even where the adapter has them (tests of the plain paths). */
  withoutFeatures?: readonly string[];
}

export interface AdapterInfo {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  backend: string;
  software: boolean;
}

/** The limits the lab raises to the adapter's maximum. */
export const RAISED_LIMITS = [
  'maxBufferSize',
  'maxStorageBufferBindingSize',
  'maxComputeWorkgroupsPerDimension',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupStorageSize',
  'maxStorageBuffersPerShaderStage',
] as const;

export const INSTALL_HINT =
  'hmmlab needs a WebGPU adapter (Vulkan on Linux). Run `bash scripts/setup.sh` as root on Debian/Ubuntu ' +
  'to install the software GPU (Mesa lavapipe: libvulkan1 and mesa-vulkan-drivers, from bookworm-backports ' +
  'on Debian 12), or install your GPU vendor’s Vulkan driver.';

export function gpuOptionsFromEnv(opts: GpuOptions = {}): GpuOptions {
  return {
    ...opts,
    adapter: opts.adapter ?? (process.env.HMMLAB_ADAPTER || undefined),
    backend: opts.backend ?? (process.env.HMMLAB_BACKEND || undefined),
  };
}

export interface OpenedAdapter {
  /** The Dawn instance: it must outlive the adapter and the device (docs/webgpu-findings.md). */
  gpu: GPU;
  adapter: GPUAdapter;
  info: AdapterInfo;
}

export async function requestAdapter(options: GpuOptions = {}): Promise<OpenedAdapter> {
  if (!process.env.XDG_RUNTIME_DIR) process.env.XDG_RUNTIME_DIR = '/tmp'; // quiets Mesa
  const flags: string[] = [];
  if (options.adapter) flags.push(`adapter=${options.adapter}`);
  if (options.backend) flags.push(`backend=${options.backend}`);
  let gpu: GPU;
  let adapter: GPUAdapter | null;
  try {
    gpu = create(flags);
    // On lavapipe Dawn prints two maxDynamic* limit-clamp warnings on stderr here, from native code
    // that no create() flag, toggle or callback reaches; they are harmless (docs/webgpu-findings.md).
    adapter = await gpu.requestAdapter({
      powerPreference: 'high-performance',
      forceFallbackAdapter: options.software === true,
    });
  } catch (e) {
    const msg = errorMessage(e);
    const what = options.adapter
      ? `no WebGPU adapter named "${options.adapter}"`
      : options.backend
        ? `no WebGPU adapter on backend "${options.backend}"`
        : 'no WebGPU adapter';
    // Dawn lists the adapters it does have; pass that list on, on the same line (the CLI prints one).
    const available = availableAdapters(msg);
    const tail = available.length ? ` (available: ${available.join('; ')})` : `. ${INSTALL_HINT}`;
    throw new HmmlabError('ENODEV', `${what}${tail}`, { cause: e });
  }
  if (!adapter) {
    if (options.backend || options.adapter) {
      // Say which adapters do exist (on the default backends), rather than to install one.
      const others = await adaptersWithoutChoice(options.software === true);
      if (others.length) {
        const what = options.backend ? `on backend "${options.backend}"` : `named "${options.adapter}"`;
        const gl = /^opengl/.test(options.backend ?? '')
          ? " (Dawn's GL backends give only compatibility-mode adapters; hmmlab needs a core one)"
          : '';
        throw new HmmlabError(
          'ENODEV',
          `no WebGPU adapter ${what}${gl}; these exist: ${others.join('; ')}: ` +
            `leave out --backend/--adapter (and HMMLAB_BACKEND/HMMLAB_ADAPTER), or name one of them`,
        );
      }
    }
    throw new HmmlabError('ENODEV', `no WebGPU adapter found. ${INSTALL_HINT}`);
  }
  return { gpu, adapter, info: describeAdapter(adapter) };
}

/** The adapters Dawn finds with no backend or name asked for, as "description [backend]". */
async function adaptersWithoutChoice(software: boolean): Promise<string[]> {
  try {
    const gpu = create([]);
    const a = await gpu.requestAdapter({
      powerPreference: 'high-performance',
      forceFallbackAdapter: software,
    });
    if (!a) return [];
    const info = describeAdapter(a);
    const backend = (a.info as { backendType?: string }).backendType ?? platformBackend();
    return [`${info.description || info.device} [${backend}]`];
  } catch {
    return [];
  }
}

/** "name [backend]" for each adapter that Dawn's error message lists (" * backend: 'vulkan', name: '...'"). */
export function availableAdapters(dawnMessage: string): string[] {
  const out: string[] = [];
  for (const m of dawnMessage.matchAll(/backend:\s*'([^']*)',\s*name:\s*'([^']*)'/g))
    out.push(`${m[2]} [${m[1]}]`);
  return out;
}

export function describeAdapter(adapter: GPUAdapter): AdapterInfo {
  const i = adapter.info as GPUAdapterInfo & { backendType?: string; isFallbackAdapter?: boolean };
  const fallback =
    i.isFallbackAdapter === true || (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter === true;
  const description = i.description ?? '';
  const software =
    fallback || /llvmpipe|lavapipe|swiftshader|software/i.test(`${description} ${i.architecture}`);
  return {
    vendor: i.vendor ?? '',
    architecture: i.architecture ?? '',
    // Dawn makes the device name from the description with dashes ("llvmpipe-llvm-15-0-6-256-bits-").
    device: (i.device ?? '').replace(/-+$/, ''),
    description,
    backend: i.backendType ?? guessBackend(),
    software,
  };
}

function guessBackend(): string {
  return process.env.HMMLAB_BACKEND || platformBackend();
}

/** The backend Dawn picks by default on this platform. */
function platformBackend(): string {
  if (process.platform === 'darwin') return 'metal';
  if (process.platform === 'win32') return 'd3d12';
  return 'vulkan';
}

/** The limits to ask for: each raised limit at the adapter's maximum, unless the caller asks otherwise. */
export function limitsToRequest(
  adapter: GPUAdapter,
  extra: Record<string, number> = {},
): Record<string, number> {
  const limits: Record<string, number> = {};
  const supported = adapter.limits as unknown as Record<string, number>;
  for (const name of RAISED_LIMITS) limits[name] = supported[name];
  for (const [name, value] of Object.entries(extra)) {
    const max = supported[name];
    if (max === undefined) throw new HmmlabError('ELIMIT', `unknown WebGPU limit "${name}"`);
    if (value > max) {
      throw new HmmlabError('ELIMIT', `requested ${name} = ${value}, but the adapter allows at most ${max}`);
    }
    limits[name] = value;
  }
  return limits;
}
