/**
 * Device threads: the kernels of shaders/ (each includes mmu.wgsl and is only its body), the one
 * bind-group layout they share, how a request becomes a launch plan (work items, grid-stride
 * threads, pages touched), and the host's reference for what they compute.
 */
import { HmmlabError } from '../errors.ts';
import type { GpuDevice } from '../gpu/device.ts';
import { loadShader } from '../gpu/shader.ts';
import { MAX_FRAME_BUFFERS } from './frames.ts';

export type KernelKind = 'devwrite' | 'devread' | 'atomic' | 'checksum';
export const KERNEL_KINDS: readonly KernelKind[] = ['devwrite', 'devread', 'atomic', 'checksum'];

const SHADER: Record<KernelKind, string> = {
  devwrite: 'devwrite.wgsl',
  devread: 'devread.wgsl',
  atomic: 'atomic_inc.wgsl',
  checksum: 'checksum.wgsl',
};

export const WORKGROUP_SIZE = 256;
/** Most invocations one launch dispatches; larger work is grid-strided over them. */
export const MAX_THREADS = 65_536;
/** The concurrency every kernel reaches where the work allows. */
export const MIN_THREADS = 16_384;
/** Files (and device address spaces) are addressed in u32 words on the GPU. */
export const MAX_DEVICE_OFFSET = 2 ** 32;

export interface KernelParams {
  /** Byte offset in the file; a multiple of 4. */
  off: number;
  /** Bytes; a positive multiple of 4. */
  len: number;
  /** devwrite: the op's tag (byte(x) = (x + 7 * tag) mod 251). */
  tag?: number;
  /** atomic: logical threads (default 16,384). */
  threads?: number;
  /** atomic: increments per logical thread (default 64). */
  k?: number;
}

export interface KernelPlan {
  kind: KernelKind;
  firstWord: number;
  /** Work items: words, or logical threads for the atomic kernel. */
  items: number;
  /** Invocations dispatched (a multiple of WORKGROUP_SIZE). */
  threads: number;
  /** Whether its accesses are stores (write faults). */
  write: boolean;
  firstPage: number;
  lastPage: number;
  /** Words of the output buffer: devread one per item, checksum two per page. */
  outWords: number;
  tagMod: number;
  k: number;
  nwords: number;
  /** atomic: logical thread i starts at word i * spread, so the threads cover the range. */
  spread: number;
}

function checkRange(kind: string, off: number, len: number): void {
  if (!Number.isSafeInteger(off) || off < 0 || off % 4 !== 0) {
    throw new HmmlabError('EINVAL', `${kind}: offset ${off} is not a non-negative multiple of 4`);
  }
  if (!Number.isSafeInteger(len) || len <= 0 || len % 4 !== 0) {
    throw new HmmlabError('EINVAL', `${kind}: length ${len} is not a positive multiple of 4`);
  }
  if (off + len > MAX_DEVICE_OFFSET) {
    throw new HmmlabError(
      'EINVAL',
      `${kind}: range ${off}+${len} ends past 4 GiB, the device's address limit`,
    );
  }
}

function positiveInt(kind: string, name: string, v: number, max: number): number {
  if (!Number.isSafeInteger(v) || v < 1 || v > max) {
    throw new HmmlabError('EINVAL', `${kind}: ${name} ${v} is not an integer from 1 to ${max}`);
  }
  return v;
}

export function dispatchThreads(items: number): number {
  return Math.min(Math.ceil(items / WORKGROUP_SIZE) * WORKGROUP_SIZE, MAX_THREADS);
}

export function planKernel(kind: KernelKind, params: KernelParams, pageSize: number): KernelPlan {
  if (!KERNEL_KINDS.includes(kind)) throw new HmmlabError('EINVAL', `unknown device kernel "${kind}"`);
  const { off, len } = params;
  checkRange(kind, off, len);
  const firstWord = off / 4;
  const words = len / 4;
  const firstPage = Math.floor(off / pageSize);
  const lastPage = Math.floor((off + len - 1) / pageSize);
  const base = { kind, firstWord, firstPage, lastPage, tagMod: 0, k: 0, nwords: words, spread: 1 };
  switch (kind) {
    case 'devwrite': {
      const tag = params.tag ?? 0;
      if (!Number.isSafeInteger(tag) || tag < 0) {
        throw new HmmlabError('EINVAL', `devwrite: tag ${tag} is not a non-negative integer`);
      }
      return {
        ...base,
        items: words,
        threads: dispatchThreads(words),
        write: true,
        outWords: 0,
        tagMod: (7 * (tag % 251)) % 251, // tag % 251 first: 7 * tag loses precision past 2^50
      };
    }
    case 'devread':
      return { ...base, items: words, threads: dispatchThreads(words), write: false, outWords: words };
    case 'checksum':
      return {
        ...base,
        items: words,
        threads: dispatchThreads(words),
        write: false,
        outWords: 2 * (lastPage - firstPage + 1),
      };
    case 'atomic': {
      const items = positiveInt(kind, 'threads', params.threads ?? MIN_THREADS, 1 << 24);
      const k = positiveInt(kind, 'k', params.k ?? 64, 1 << 20);
      const spread = Math.max(1, Math.floor(words / items));
      return { ...base, items, threads: dispatchThreads(items), write: true, outWords: 0, k, spread };
    }
  }
}

/** The uniform block of shaders/mmu.wgsl (struct Params). */
export function encodeParams(
  plan: KernelPlan,
  layout: { pageWords: number; framesPerBuffer: number; countsBase: number; faultCap: number; pages: number },
): Uint32Array {
  return Uint32Array.from([
    plan.firstWord,
    plan.items,
    plan.threads,
    layout.pageWords,
    layout.framesPerBuffer,
    plan.tagMod,
    plan.k,
    plan.nwords,
    plan.firstPage,
    layout.countsBase,
    layout.faultCap,
    layout.pages,
    plan.spread,
    0,
    0,
    0,
  ]);
}

/** Pipelines of one device: one explicit bind-group layout for every kernel, so unused bindings are fine. */
export class KernelPipelines {
  private constructor(
    readonly layout: GPUBindGroupLayout,
    private readonly pipelines: Map<KernelKind, GPUComputePipeline>,
    readonly pteUpdate: GPUComputePipeline,
  ) {}

  static async create(gpu: GpuDevice): Promise<KernelPipelines> {
    const d = gpu.device;
    const storage = (binding: number): GPUBindGroupLayoutEntry => ({
      binding,
      visibility: GPUShaderStage.COMPUTE,
      buffer: { type: 'storage' },
    });
    const entries: GPUBindGroupLayoutEntry[] = [
      { binding: 0, visibility: GPUShaderStage.COMPUTE, buffer: { type: 'uniform' } },
      storage(1),
      storage(2),
      storage(3),
      storage(4),
    ];
    for (let b = 0; b < MAX_FRAME_BUFFERS; b++) entries.push(storage(5 + b));
    const layout = await gpu.scoped('device kernel layout', () =>
      d.createBindGroupLayout({ label: 'device-mmu', entries }),
    );
    const pipelineLayout = d.createPipelineLayout({ label: 'device-mmu', bindGroupLayouts: [layout] });
    const pipelines = new Map<KernelKind, GPUComputePipeline>();
    for (const kind of KERNEL_KINDS) {
      const module = await loadShader(gpu, SHADER[kind]);
      const pipeline = await gpu.scoped(`pipeline ${kind}`, () =>
        d.createComputePipelineAsync({
          label: kind,
          layout: pipelineLayout,
          compute: { module, entryPoint: 'main' },
        }),
      );
      pipelines.set(kind, pipeline);
    }
    const pteModule = await loadShader(gpu, 'pte_update.wgsl');
    const pteUpdate = await gpu.scoped('pipeline pte_update', () =>
      d.createComputePipelineAsync({
        label: 'pte_update',
        layout: 'auto',
        compute: { module: pteModule, entryPoint: 'main' },
      }),
    );
    return new KernelPipelines(layout, pipelines, pteUpdate);
  }

  pipeline(kind: KernelKind): GPUComputePipeline {
    return this.pipelines.get(kind)!;
  }
}

// ---- the host's reference for what the kernels compute ----

/** The op log's byte at file offset x for an op with `tag` (docs/oplog.md). */
export function patternByte(x: number, tag: number): number {
  return (x + 7 * tag) % 251;
}

/** The bytes devwrite(off, len, tag) stores. */
export function patternBytes(off: number, len: number, tag: number): Uint8Array {
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) out[i] = patternByte(off + i, tag);
  return out;
}

/** What the checksum kernel computes for one page's worth of words: wrapping sum and xor. */
export function wordChecksum(bytes: Uint8Array): { sum: number; xor: number } {
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
  let sum = 0;
  let xor = 0;
  for (const w of words) {
    sum = (sum + w) >>> 0;
    xor = (xor ^ w) >>> 0;
  }
  return { sum, xor };
}
