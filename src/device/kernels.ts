/**
 * Device threads: the kernels of shaders/ (each includes mmu.wgsl and is only its body), the one
 * bind-group layout they share, how a request becomes a launch plan (work items, grid-stride
 * threads, pages touched), and the host's reference for what they compute.
 */
import { HmmlabError } from '../errors.ts';
import type { GpuDevice } from '../gpu/device.ts';
import { loadShader } from '../gpu/shader.ts';
import { MAX_FRAME_BUFFERS } from './frames.ts';

export type KernelKind = 'devwrite' | 'devread' | 'atomic' | 'checksum' | 'slots';
export const KERNEL_KINDS: readonly KernelKind[] = ['devwrite', 'devread', 'atomic', 'checksum', 'slots'];

const SHADER: Record<KernelKind, string> = {
  devwrite: 'devwrite.wgsl',
  devread: 'devread.wgsl',
  atomic: 'atomic_inc.wgsl',
  checksum: 'checksum.wgsl',
  slots: 'slot_store.wgsl',
};

/** Kernels whose work items are logical threads (a slice of them a chunk), not words. */
export const isThreadKernel = (kind: KernelKind): boolean => kind === 'atomic' || kind === 'slots';

/** The bits of a slot value that hold the run's tag (slots: (tag << 20) | thread). */
export const SLOT_TAG_MASK = 0xfff;

/** What the slots kernel's thread t stores for `tag` (the host's reference). */
export function slotValue(tag: number, t: number): number {
  return (((tag & SLOT_TAG_MASK) << 20) | (t & 0xfffff)) >>> 0;
}

export const WORKGROUP_SIZE = 256;
/** Most invocations one launch dispatches; larger work is grid-strided over them. */
export const MAX_THREADS = 65_536;
/** The concurrency every kernel reaches where the work allows. */
export const MIN_THREADS = 16_384;
/**
 * Page indices a device address space can hold: a fault entry keeps the page in 31 bits (the top
 * bit says write). The device page table is a u32 per page, so maxBufferSize may bind it sooner.
 */
export const MAX_DEVICE_PAGES = 2 ** 31;
/** The atomic kernel's increments cycle over the range's words in u32 arithmetic: at most 4 GiB. */
export const MAX_ATOMIC_BYTES = 2 ** 32;
/**
 * Work one launch covers, by default (DeviceMemoryOptions.chunkBytes): 16 MiB of words, or of
 * atomic threads' progress. A longer op runs chunk after chunk, each with its own fault/replay
 * loop, so a launch's buffers stay within the binding limits and the run's memory stays bounded.
 * A software adapter's buffers are host memory, and its launches cost little next to the work:
 * there the default is 4 MiB (a devread's output, its readback and its copy are 12 MiB, not 48).
 */
export const DEFAULT_CHUNK_BYTES = 16 << 20;
export const SOFTWARE_CHUNK_BYTES = 4 << 20;
/** The largest chunk: a chunk's word offsets (first_word + item) stay well within u32. */
export const MAX_CHUNK_BYTES = 1 << 30;

export interface KernelParams {
  /** Byte offset in the file; a multiple of 4. */
  off: number;
  /** Bytes; a positive multiple of 4. */
  len: number;
  /** devwrite: the op's tag (byte(x) = (x + 7 * tag) mod 251); slots: the value's tag (12 bits). */
  tag?: number;
  /** atomic, slots: logical threads (default 16,384). */
  threads?: number;
  /** atomic: increments per logical thread (default 64). */
  k?: number;
}

/** The whole request; its launches run chunk by chunk (planChunks). */
export interface KernelPlan {
  kind: KernelKind;
  firstWord: number;
  /** Work items: words, or logical threads for the atomic kernel. */
  items: number;
  /** Whether its accesses are stores (write faults). */
  write: boolean;
  firstPage: number;
  lastPage: number;
  /** The op's tag reduced: (7 * tag) mod 251 (devwrite); tag & SLOT_TAG_MASK (slots). */
  tagMod: number;
  k: number;
  nwords: number;
  /** atomic: logical thread i starts at word i * spread, so the threads cover the range. */
  spread: number;
  pageWords: number;
}

/**
 * One launch's share of the work: a run of whole pages for the word kernels (so that a page is
 * serviced in one chunk only and its fault counts are those of the unchunked op), a slice of
 * logical threads for the atomic kernel. Its fault/replay loop ends before the next chunk starts.
 */
export interface KernelChunk {
  /** 0-based, in run order. */
  index: number;
  /** The op's items [itemBase, itemBase + items). */
  itemBase: number;
  items: number;
  /** Invocations dispatched (a multiple of WORKGROUP_SIZE). */
  threads: number;
  /** Pages its items may touch. */
  firstPage: number;
  lastPage: number;
  /** Words from the start of firstPage to item 0's word (word kernels; atomic: to the range's word 0). */
  firstWord: number;
  /** devwrite: (file offset of item 0 + 7 * tag) mod 251. */
  patternBase: number;
  /** Words of the output buffer: devread one per item, checksum two per page. */
  outWords: number;
  /** Progress slots: one per page for the word kernels, one per logical thread for atomic. */
  slots: number;
}

function checkRange(kind: KernelKind, off: number, len: number, pageSize: number): void {
  if (!Number.isSafeInteger(off) || off < 0 || off % 4 !== 0) {
    throw new HmmlabError('EINVAL', `${kind}: offset ${off} is not a non-negative multiple of 4`);
  }
  if (!Number.isSafeInteger(len) || len <= 0 || len % 4 !== 0) {
    throw new HmmlabError('EINVAL', `${kind}: length ${len} is not a positive multiple of 4`);
  }
  if (Math.floor((off + len - 1) / pageSize) >= MAX_DEVICE_PAGES) {
    throw new HmmlabError(
      'EINVAL',
      `${kind}: range ${off}+${len} ends past page ${MAX_DEVICE_PAGES - 1}, the device's address limit`,
    );
  }
  if (isThreadKernel(kind) && len > MAX_ATOMIC_BYTES) {
    throw new HmmlabError('EINVAL', `${kind}: length ${len} is over 4 GiB, the ${kind} kernel's range limit`);
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
  checkRange(kind, off, len, pageSize);
  const firstWord = off / 4;
  const words = len / 4;
  const firstPage = Math.floor(off / pageSize);
  const lastPage = Math.floor((off + len - 1) / pageSize);
  const base = {
    kind,
    firstWord,
    firstPage,
    lastPage,
    tagMod: 0,
    k: 0,
    nwords: words,
    spread: 1,
    pageWords: pageSize / 4,
  };
  switch (kind) {
    case 'devwrite': {
      const tag = params.tag ?? 0;
      if (!Number.isSafeInteger(tag) || tag < 0) {
        throw new HmmlabError('EINVAL', `devwrite: tag ${tag} is not a non-negative integer`);
      }
      // tag % 251 first: 7 * tag loses precision past 2^50.
      return { ...base, items: words, write: true, tagMod: (7 * (tag % 251)) % 251 };
    }
    case 'devread':
    case 'checksum':
      return { ...base, items: words, write: false };
    case 'atomic': {
      const items = positiveInt(kind, 'threads', params.threads ?? MIN_THREADS, 1 << 24);
      const k = positiveInt(kind, 'k', params.k ?? 64, 1 << 20);
      const spread = Math.max(1, Math.floor(words / items));
      return { ...base, items, write: true, k, spread };
    }
    case 'slots': {
      // One store a thread (k 1), thread t on word t * spread: the range holds a slot a thread.
      const items = positiveInt(kind, 'threads', params.threads ?? MIN_THREADS, 1 << 20);
      const tag = params.tag ?? 0;
      if (!Number.isSafeInteger(tag) || tag < 0) {
        throw new HmmlabError('EINVAL', `slots: tag ${tag} is not a non-negative integer`);
      }
      const spread = Math.max(1, Math.floor(words / items));
      return { ...base, items, write: true, k: 1, spread, tagMod: tag & SLOT_TAG_MASK };
    }
  }
}

/** The chunk size in force: the setting, within the adapter's binding and buffer limits. */
export function chunkBytesFor(
  setting: number,
  limits: { maxStorageBufferBindingSize: number; maxBufferSize: number },
): number {
  if (!Number.isSafeInteger(setting) || setting < 4) {
    throw new HmmlabError('EINVAL', `kernel chunk size ${setting} is not an integer of at least 4 bytes`);
  }
  return Math.min(setting, limits.maxStorageBufferBindingSize, limits.maxBufferSize, MAX_CHUNK_BYTES);
}

/**
 * Cut a plan into chunks of at most `chunkBytes` of work: whole pages (at least one) of words for
 * devwrite, devread and checksum; chunkBytes / 4 logical threads for atomic, whose pages are those
 * its threads' increments reach (the whole range when they wrap).
 */
export function* planChunks(plan: KernelPlan, chunkBytes: number): Generator<KernelChunk> {
  const pw = plan.pageWords;
  if (isThreadKernel(plan.kind)) {
    const per = Math.max(1, Math.floor(chunkBytes / 4));
    const w0 = plan.firstWord % pw; // the range's word 0 within its first page
    for (let index = 0, a = 0; a < plan.items; index++, a += per) {
      const items = Math.min(per, plan.items - a);
      const lo = a * plan.spread;
      const hi = (a + items - 1) * plan.spread + plan.k - 1; // last word offset reached, unwrapped
      const whole = hi >= plan.nwords;
      yield {
        index,
        itemBase: a,
        items,
        threads: dispatchThreads(items),
        firstPage: whole ? plan.firstPage : plan.firstPage + Math.floor((w0 + lo) / pw),
        lastPage: whole ? plan.lastPage : plan.firstPage + Math.floor((w0 + hi) / pw),
        firstWord: w0,
        patternBase: plan.kind === 'slots' ? plan.tagMod : 0,
        outWords: 0,
        slots: items,
      };
    }
    return;
  }
  const pagesPer = Math.max(1, Math.floor(chunkBytes / (pw * 4)));
  const endWord = plan.firstWord + plan.items;
  for (let index = 0, page = plan.firstPage; page <= plan.lastPage; index++, page += pagesPer) {
    const lastPage = Math.min(plan.lastPage, page + pagesPer - 1);
    const startWord = Math.max(plan.firstWord, page * pw);
    const items = Math.min(endWord, (lastPage + 1) * pw) - startWord;
    const pages = lastPage - page + 1;
    yield {
      index,
      itemBase: startWord - plan.firstWord,
      items,
      threads: dispatchThreads(items),
      firstPage: page,
      lastPage,
      firstWord: startWord - page * pw,
      patternBase: ((startWord % 251) * 4 + plan.tagMod) % 251,
      outWords: plan.kind === 'devread' ? items : plan.kind === 'checksum' ? 2 * pages : 0,
      slots: pages,
    };
  }
}

/** How the launch binds the device page table: a window of whole 256-byte blocks from pteBase. */
export interface LaunchLayout {
  pageWords: number;
  framesPerBuffer: number;
  /** Page of the bound PTE window's word 0, and pages the window holds. */
  pteBase: number;
  ptePages: number;
  /** Fault buffer: entries it holds, and the word where its per-page raw counts start. */
  faultCap: number;
  countsBase: number;
  /** This launch's stamp in the progress record (1 for a chunk's first launch). */
  launch: number;
}

/** The uniform block of shaders/mmu.wgsl (struct Params), for one launch of one chunk. */
export function encodeParams(plan: KernelPlan, chunk: KernelChunk, layout: LaunchLayout): Uint32Array {
  return Uint32Array.from([
    chunk.firstPage,
    chunk.firstWord,
    chunk.items,
    chunk.threads,
    layout.pageWords,
    layout.framesPerBuffer,
    chunk.patternBase,
    plan.k,
    plan.nwords,
    layout.pteBase,
    layout.ptePages,
    layout.faultCap,
    layout.countsBase,
    plan.spread,
    layout.launch,
    chunk.itemBase,
    // atomic: the range's first page (its words count from there); the word kernels' is the chunk's
    plan.firstPage,
    0,
    0,
    0,
  ]);
}

/** Bytes of the Params uniform buffer (encodeParams' words). */
export const PARAMS_BYTES = 80;

const pipelineCache = new WeakMap<GpuDevice, Map<boolean, Promise<KernelPipelines>>>();

/** Pipelines of one device: one explicit bind-group layout for every kernel, so unused bindings are fine. */
export class KernelPipelines {
  private constructor(
    readonly layout: GPUBindGroupLayout,
    private readonly pipelines: Map<KernelKind, GPUComputePipeline>,
    readonly pteUpdate: GPUComputePipeline,
    /** Whether the device MMU records faults per subgroup (shaders/mmu.wgsl). */
    readonly subgroups: boolean,
  ) {}

  /**
   * The kernels of `gpu`, their device MMU recording one fault per subgroup and page where the
   * adapter has subgroups (unless `subgroups` is false), else one per thread.
   */
  static create(gpu: GpuDevice, opts: { subgroups?: boolean } = {}): Promise<KernelPipelines> {
    const subgroups = (opts.subgroups ?? true) && gpu.has('subgroups');
    // Pipelines hold no state: one set per device (and MMU variant), whatever uses them. Compiling
    // them costs tens of ms each on a software adapter, and tests make a device memory a test.
    let perGpu = pipelineCache.get(gpu);
    if (!perGpu) {
      perGpu = new Map();
      pipelineCache.set(gpu, perGpu);
    }
    let made = perGpu.get(subgroups);
    if (!made) {
      made = KernelPipelines.compile(gpu, subgroups);
      perGpu.set(subgroups, made);
      made.catch(() => perGpu.delete(subgroups));
    }
    return made;
  }

  private static async compile(gpu: GpuDevice, subgroups: boolean): Promise<KernelPipelines> {
    const features = subgroups ? ['subgroups'] : [];
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
      const module = await loadShader(gpu, SHADER[kind], {}, features);
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
    return new KernelPipelines(layout, pipelines, pteUpdate, subgroups);
  }

  pipeline(kind: KernelKind): GPUComputePipeline {
    return this.pipelines.get(kind)!;
  }
}

// ---- the host's reference for what the kernels compute ----

// devwrite stores the op log's pattern (docs/oplog.md): the one implementation is src/oplog/pattern.ts.
export { patternByte, patternBytes } from '../oplog/pattern.ts';

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
