/**
 * HmmFs: a filesystem whose files are real files in a directory, served through hmmlab's page cache
 * (src/mm). One mount owns one host page pool, one LRU, one block budget and the mm of the process
 * whose threads map its files (mmap_lock, the CPU TLB shootdown of its CPU threads).
 *
 * Operations run concurrently (docs/ARCHITECTURE.md, "Threads and locks"): every public operation
 * of HmmFs, File and VmArea is a lockdep task holding the mount shared (s_umount); remount, unmount,
 * the invariant checker and device detach hold it exclusive. Under it each takes the file's locks
 * its path needs (i_rwsem for the writers of data and size, invalidate_lock shared for the paths
 * that bring pages in and exclusive for those that take a range out), then page locks. A device
 * kernel run holds its file's invalidate_lock shared: CPU faults, syscalls, reclaim and writeback
 * on the same file run beside it, page by page. The functions a policy calls from inside a device
 * fault (src/mm/index.ts) take only page locks: the fault runs inside the kernel's operation.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { formatPages } from '../device/fault.ts';
import { MAX_PAGE_SIZE, MIN_PAGE_SIZE } from '../device/frames.ts';
import type { KernelKind, KernelParams } from '../device/kernels.ts';
import type { DeviceOutputSink } from '../device/replay.ts';
import { HmmlabError, isHmmlabError } from '../errors.ts';
import { type FaultInjector, NO_INJECT } from '../inject/inject.ts';
import { lockdep } from '../lock/lockdep.ts';
import { MMAP_LOCK, MOUNT_LOCK } from '../lock/order.ts';
import { RwSemaphore } from '../lock/rwsem.ts';
import {
  checkBytes,
  checkDirectAlign,
  checkFileLimit,
  checkOffset,
  DEFAULT_MAX_FILE_SIZE,
  MAX_FILE_SIZE_LIMIT,
} from '../mm/args.ts';
import { dio_read, dio_write } from '../mm/direct.ts';
import { filemap_read, generic_perform_write } from '../mm/filemap.ts';
import { Mapping } from '../mm/mapping.ts';
import { type FaultResult, filemap_fault, VmArea, type VmAreaOwner, zap_vma } from '../mm/memory.ts';
import { PageLocked, PageWriteback, trylock_page, unlock_page } from '../mm/page.ts';
import { PageCache } from '../mm/pagecache.ts';
import { pte_none, pte_write } from '../mm/pte.ts';
import { type CpuTlbShootdown, tlb_finish_mmu, tlb_gather_mmu } from '../mm/rmap.ts';
import { page_snapshot } from '../mm/snapshot.ts';
import type { PageTracer } from '../mm/trace.ts';
import { punch_hole, truncate_inode_pages_range, truncate_setsize } from '../mm/truncate.ts';
import type { PageSnapshot } from '../mm/types.ts';
import { PG_dirty } from '../mm/types.ts';
import { shrink_page } from '../mm/vmscan.ts';
import { filemap_write_and_wait_range } from '../mm/writeback.ts';
import {
  type DeviceKernelResult,
  type DevicePageColumns,
  type DevicePrefetch,
  type DeviceRun,
  isDevicePolicy,
} from '../policy/device.ts';
import { type CoherencePolicy, hostOnlyPolicy } from '../policy/policy.ts';
import { BackingFile, type BlockBudget } from './backing.ts';

export { DEFAULT_MAX_FILE_SIZE, MAX_FILE_SIZE_LIMIT };

export interface MountOptions {
  /** Directory holding the files; a fresh os.tmpdir() one when absent. */
  dir?: string;
  /** Page size in bytes: a power of two from 4 KiB to 2 MiB (default 4096). */
  pageSize?: number;
  /** Host pages in the page pool (default 1024). */
  hostPages?: number;
  /** Block budget in pages (blocks of pageSize bytes) over all files; none when absent. */
  blocks?: number;
  /**
   * File-size limit in bytes (default 1 GiB, at most MAX_FILE_SIZE_LIMIT): EFBIG past it. Only the
   * sparse backing file grows with what is written below it; no memory grows with the limit.
   */
  maxFileSize?: number;
  /** Coherence policy (default hostOnlyPolicy). */
  policy?: CoherencePolicy;
  /** Fault injection for the backing files and the policy's device (default: none). */
  inject?: FaultInjector;
  /** --trace: the pages whose every event is reported (src/mm/trace.ts). */
  trace?: PageTracer;
}

/** A snapshot row: the page cache's columns and the device's (docs/DESIGN.md's state letters). */
export interface FsPageSnapshot extends PageSnapshot, DevicePageColumns {}

const NO_DEVICE: DevicePageColumns = { dev: '-', frame: null, devDirty: false };

/** A device write (or atomic) that page_mkwrite refused on some pages: SIGBUS-like, after the run. */
function refusedError(what: string, name: string, failed: DeviceRun['failed']): HmmlabError {
  const pages = failed.map((f) => f.index);
  return new HmmlabError(
    'EFAULT',
    `SIGBUS: device ${what} to page${pages.length > 1 ? 's' : ''} ${formatPages(pages)} of ${name} refused: ` +
      `${failed[0].message}; the other pages' writes landed`,
    { pages },
  );
}

export interface OpenOptions {
  create?: boolean;
}

interface Inode {
  readonly mapping: Mapping;
  readonly backing: BackingFile;
}

const LAST_PAGE = Number.MAX_SAFE_INTEGER;

function checkMountOptions(
  o: MountOptions,
): Required<Omit<MountOptions, 'dir' | 'blocks' | 'inject' | 'trace'>> & { blocks: number } {
  const pageSize = o.pageSize ?? 4096;
  if (
    !Number.isInteger(pageSize) ||
    pageSize < MIN_PAGE_SIZE ||
    pageSize > MAX_PAGE_SIZE ||
    (pageSize & (pageSize - 1)) !== 0
  ) {
    throw new HmmlabError('EINVAL', `pageSize must be a power of two from 4096 to 2097152, got ${pageSize}`);
  }
  const hostPages = o.hostPages ?? 1024;
  if (!Number.isSafeInteger(hostPages) || hostPages < 1) {
    throw new HmmlabError('EINVAL', `hostPages must be a positive integer, got ${hostPages}`);
  }
  const blocks = o.blocks ?? Number.POSITIVE_INFINITY;
  if (o.blocks !== undefined && (!Number.isSafeInteger(blocks) || blocks < 0)) {
    throw new HmmlabError('EINVAL', `blocks must be a non-negative integer, got ${o.blocks}`);
  }
  const maxFileSize = o.maxFileSize ?? DEFAULT_MAX_FILE_SIZE;
  if (!Number.isSafeInteger(maxFileSize) || maxFileSize < 1 || maxFileSize > MAX_FILE_SIZE_LIMIT) {
    throw new HmmlabError(
      'EINVAL',
      `maxFileSize must be a positive integer of at most ${MAX_FILE_SIZE_LIMIT} (8 TiB), got ${o.maxFileSize}`,
    );
  }
  return { pageSize, hostPages, blocks, maxFileSize, policy: o.policy ?? hostOnlyPolicy };
}

export class HmmFs {
  readonly dir: string;
  readonly pageSize: number;
  readonly hostPages: number;
  readonly maxFileSize: number;
  readonly policy: CoherencePolicy;
  readonly inject: FaultInjector;
  /** --trace's tracer, carried over every remount (null: nothing traced). */
  readonly tracer: PageTracer | null;
  private readonly blockLimit: number;
  /** The mount (s_umount): operations shared; remount, unmount, checks and detach exclusive. */
  private readonly mount_lock = new RwSemaphore(MOUNT_LOCK);
  /** The mm's mmap_lock: CPU faults shared, munmap exclusive. */
  readonly mmap_lock = new RwSemaphore(MMAP_LOCK);
  /** The CPU threads' TLB shootdown, once CPU threads run on this mount's mappings. */
  private cpuTlb: CpuTlbShootdown | null = null;
  private host!: PageCache;
  private budget!: BlockBudget;
  private inodes = new Map<string, Inode>();
  private mounted = false;
  /** Bumped at every unmount: File handles of an older mount are closed. */
  private generation = 0;

  private constructor(
    dir: string,
    o: ReturnType<typeof checkMountOptions>,
    inject: FaultInjector,
    tracer: PageTracer | null,
  ) {
    this.dir = dir;
    this.inject = inject;
    this.tracer = tracer;
    // A page's state as the tables write it: host and CPU from the page cache, device from the policy.
    tracer?.setStateOf((m, index) => {
      const r = page_snapshot(m, index, index)[0];
      const dev = isDevicePolicy(o.policy) ? o.policy.devicePage(m, index).dev : '-';
      return { host: r.host, dev, cpu: r.cpu };
    });
    this.pageSize = o.pageSize;
    this.hostPages = o.hostPages;
    this.maxFileSize = o.maxFileSize;
    this.policy = o.policy;
    this.blockLimit = o.blocks;
  }

  static async mount(opts: MountOptions = {}): Promise<HmmFs> {
    const o = checkMountOptions(opts);
    const dir = opts.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'hmmlab-'));
    if (!fs.existsSync(dir)) throw new HmmlabError('ENOENT', `mount: directory ${dir} does not exist`);
    if (!fs.statSync(dir).isDirectory()) throw new HmmlabError('ENOTDIR', `mount: ${dir} is not a directory`);
    const hfs = new HmmFs(dir, o, opts.inject ?? NO_INJECT, opts.trace ?? null);
    if (isDevicePolicy(o.policy)) {
      o.policy.setSerializer((fn) => hfs.exclusive('device detach', fn));
      if (opts.inject) o.policy.setInjector(opts.inject);
    }
    hfs.setup();
    return hfs;
  }

  private setup(): void {
    this.host = new PageCache(this.pageSize, this.hostPages, this.policy, this.host?.vmstat);
    this.host.tlb = this.cpuTlb;
    this.host.tracer = this.tracer;
    this.budget = { used: 0, limit: this.blockLimit };
    this.inodes = new Map();
    this.mounted = true;
  }

  /** The page cache of this mount (pool, LRU, vmstat): for the policies and tests. */
  get pageCache(): PageCache {
    return this.host;
  }

  /** Blocks in use over all open files of this mount. */
  get blocksUsed(): number {
    return this.budget.used;
  }

  /** Run `fn` as one public operation: a lockdep task of its own, the mount held shared. */
  op<T>(what: string, fn: () => Promise<T>): Promise<T> {
    return lockdep.task(what, () => this.mount_lock.read(fn));
  }

  /** Run `fn` with the mount held exclusive: no operation is halfway through while it runs. */
  exclusive<T>(what: string, fn: () => Promise<T>): Promise<T> {
    return lockdep.task(what, () => this.mount_lock.write(fn));
  }

  /** Run `fn` as a public operation (op): tests and the policies run their own work this way. */
  serialize<T>(fn: () => Promise<T>): Promise<T> {
    return this.op('operation', fn);
  }

  /**
   * CPU threads run on this mount's mappings: every PTE change that takes a permission away waits
   * for their TLB shootdown (src/cpu/tlb.ts) before it is relied on.
   */
  attachTlb(tlb: CpuTlbShootdown | null): void {
    this.cpuTlb = tlb;
    this.host.tlb = tlb;
  }

  /** What a VmArea of this mount needs: its operations and the mm's mmap_lock. */
  get vmOwner(): VmAreaOwner {
    return { op: (fn) => this.op('mapping access', fn), mmap_lock: this.mmap_lock };
  }

  /**
   * handle_mm_fault for a CPU thread's access to page `index` of `vma`: under the mount and
   * mmap_lock shared, SIGSEGV outside the mapping (or once it is unmapped), SIGBUS past EOF, then
   * filemap_fault under the file's invalidate_lock shared. A fault that finds the PTE already
   * granting the access (another thread's fault won, or mapped it writable: a read fault never
   * downgrades it) is spurious and changes nothing.
   */
  handle_mm_fault(vma: VmArea, index: number, write: boolean): Promise<FaultResult> {
    return this.op('cpu fault', () =>
      this.mmap_lock.read(async () => {
        const m = vma.mapping;
        if (vma.closed || index >= vma.nrPages || vma.holes.has(index)) {
          throw new HmmlabError(
            'EFAULT',
            `fault on page ${index} of ${m.name} outside its mapping (SIGSEGV)`,
          );
        }
        const pte = Atomics.load(vma.pte, index);
        if (!pte_none(pte) && (!write || pte_write(pte))) return 'spurious';
        return m.invalidate_lock.read(async () => {
          if (index * m.pageSize >= m.size) {
            throw new HmmlabError(
              'EFAULT',
              `fault on page ${index} of ${m.name} (offset ${index * m.pageSize}) past EOF ${m.size} (SIGBUS)`,
            );
          }
          return filemap_fault(vma, index, write);
        });
      }),
    );
  }

  private checkMounted(what: string): void {
    if (!this.mounted)
      throw new HmmlabError('EBADF', `${what}: the filesystem at ${this.dir} is not mounted`);
  }

  open(name: string, opts: OpenOptions = {}): Promise<File> {
    return this.op('open', async () => {
      this.checkMounted(`open ${name}`);
      if (typeof name !== 'string' || name === '' || name === '.' || name === '..' || /[/\\\0]/.test(name)) {
        throw new HmmlabError(
          'EINVAL',
          `file name must be a plain name without '/', got ${JSON.stringify(name)}`,
        );
      }
      let inode = this.inodes.get(name);
      if (!inode) {
        const p = path.join(this.dir, name);
        if (!opts.create && !fs.existsSync(p))
          throw new HmmlabError('ENOENT', `open: no file ${name} in ${this.dir}`);
        const backing = new BackingFile(p, this.pageSize, this.budget, opts.create === true, this.inject);
        const mapping = new Mapping(this.host, name, backing, backing.size);
        this.host.mappings.add(mapping);
        inode = { mapping, backing };
        this.inodes.set(name, inode);
      }
      return new File(this, inode.mapping, this.generation);
    });
  }

  /** Is `generation` the current mount's? (File handles check it.) */
  isLive(generation: number): boolean {
    return this.mounted && generation === this.generation;
  }

  /**
   * drop_caches: every host page that can go without losing data goes: clean pages (unmapped from
   * the CPU first) and pages whose data the device holds (the policy leaves a device entry).
   * Dirty host-only pages stay. No shadow entries are left (those of earlier reclaim are cleared):
   * a page read again after drop_caches is not a workingset refault. Returns the pages dropped.
   */
  dropCaches(): Promise<number> {
    return this.op('drop_caches', async () => {
      this.checkMounted('dropCaches');
      this.host.vmstat.count('drop_pagecache');
      let dropped = 0;
      for (const m of this.host.mappings) {
        m.shadows.clear(); // invalidate_mapping_pages clears shadow entries too
        for (const e of [...m.i_pages.values()]) {
          if (e.kind !== 'page' || PageLocked(e) || PageWriteback(e) || !trylock_page(e)) continue;
          let gone = false;
          try {
            gone = await shrink_page(e, 'drop_caches');
          } finally {
            if (!gone) unlock_page(e);
          }
          if (gone) dropped++;
        }
      }
      this.host.vmstat.count('pginvalidate', dropped);
      return dropped;
    });
  }

  /** Unmount: everything written back and synced, every mapping torn down, every page dropped. */
  unmount(): Promise<void> {
    return this.exclusive('unmount', async () => {
      if (!this.mounted) return;
      await this.teardown();
    });
  }

  /** Unmount, then mount the same directory again: File handles and mappings of before are closed. */
  remount(): Promise<void> {
    return this.exclusive('remount', async () => {
      this.checkMounted('remount');
      await this.teardown();
      this.setup();
    });
  }

  /**
   * Write back, sync and drop every file. A file leaves the mount only once it is done, so an
   * unmount that an I/O error stopped can be run again and goes on where it stopped, losing nothing.
   */
  private async teardown(): Promise<void> {
    // A lost device is reported once (EIO naming the pages lost); the unmount still completes.
    let lost: unknown;
    for (const [name, { mapping, backing }] of [...this.inodes]) {
      try {
        await filemap_write_and_wait_range(mapping, 0, LAST_PAGE, 'unmount');
      } catch (e) {
        if (!isHmmlabError(e) || e.code !== 'EIO' || !/device lost/.test(e.message)) throw e;
        lost ??= e;
        await filemap_write_and_wait_range(mapping, 0, LAST_PAGE, 'unmount');
      }
      const tlb = tlb_gather_mmu();
      for (const vma of [...mapping.i_mmap]) zap_vma(vma, tlb);
      await tlb_finish_mmu(this.host, tlb);
      await truncate_inode_pages_range(mapping, 0, LAST_PAGE, 'unmount');
      await backing.set_size(mapping.size);
      await backing.fsync();
      backing.close();
      this.host.mappings.delete(mapping);
      this.inodes.delete(name);
    }
    this.mounted = false;
    this.generation++;
    if (lost) throw lost;
  }

  /** /proc/vmstat: page-cache events and gauges, the policy's counters after them. */
  vmstat(): Record<string, number> {
    return { ...this.host.snapshotVmstat(), blocks_used: this.budget.used, ...this.policy.stats() };
  }

  /** Page states of pages [first, last] of file `name` (open in this mount), device columns included. */
  snapshot(name: string, first: number, last: number): FsPageSnapshot[] {
    const inode = this.inodes.get(name);
    if (!inode) throw new HmmlabError('ENOENT', `snapshot: file ${name} is not open`);
    const policy = this.policy;
    return page_snapshot(inode.mapping, first, last).map((r) => ({
      ...r,
      ...(isDevicePolicy(policy) ? policy.devicePage(inode.mapping, r.index) : NO_DEVICE),
    }));
  }

  /** The open files' address spaces (for the invariant checker and snapshots). */
  get openMappings(): Mapping[] {
    return [...this.inodes.values()].map((i) => i.mapping);
  }
}

/**
 * An open file: its inode's address_space. Each method is one operation (HmmFs.op) that takes the
 * file's locks its path needs; close() makes the handle EBADF.
 */
export class File {
  private closed = false;

  constructor(
    readonly fs: HmmFs,
    readonly mapping: Mapping,
    private readonly generation: number,
  ) {}

  get name(): string {
    return this.mapping.name;
  }

  /** i_size in bytes. */
  get size(): number {
    return this.mapping.size;
  }

  /**
   * One operation on the file: the mount shared, then `locks` (i_rwsem exclusive for `writer`,
   * invalidate_lock shared or exclusive), outermost first.
   */
  private op<T>(
    what: string,
    fn: () => Promise<T>,
    locks: { writer?: boolean; invalidate?: 'read' | 'write' } = {},
  ): Promise<T> {
    const m = this.mapping;
    const inner = !locks.invalidate
      ? fn
      : locks.invalidate === 'read'
        ? () => m.invalidate_lock.read(fn)
        : () => m.invalidate_lock.write(fn);
    const locked = locks.writer ? () => m.i_rwsem.write(inner) : inner;
    return this.fs.op(`${what} ${this.name}`, async () => {
      if (this.closed || !this.fs.isLive(this.generation)) {
        throw new HmmlabError('EBADF', `${what} on ${this.name}: the file is closed`);
      }
      return locked();
    });
  }

  /**
   * read(2): the bytes of [off, off + len), short at EOF. With `into` (at least len bytes), they are
   * copied there, as read(2) fills the caller's buffer, and a view of it is returned.
   */
  read(off: number, len: number, into?: Uint8Array): Promise<Uint8Array> {
    return this.op(
      'read',
      async () => {
        checkOffset('read offset', off);
        checkOffset('read length', len);
        if (into && into.byteLength < len) {
          throw new HmmlabError('EINVAL', `read of ${len} bytes into a buffer of ${into.byteLength}`);
        }
        return filemap_read(this.mapping, off, len, into);
      },
      { invalidate: 'read' },
    );
  }

  write(off: number, bytes: Uint8Array): Promise<void> {
    return this.op(
      'write',
      async () => {
        checkOffset('write offset', off);
        checkBytes('write bytes', bytes);
        checkFileLimit('write', off, bytes.length, this.fs.maxFileSize);
        await generic_perform_write(this.mapping, off, bytes);
      },
      { writer: true },
    );
  }

  fsync(): Promise<void> {
    return this.op('fsync', async () => {
      await filemap_write_and_wait_range(this.mapping, 0, LAST_PAGE, 'writeback');
      await this.mapping.a_ops.fsync();
    });
  }

  truncate(size: number): Promise<void> {
    return this.op(
      'truncate',
      async () => {
        checkOffset('truncate size', size);
        checkFileLimit('truncate', 0, size, this.fs.maxFileSize);
        await truncate_setsize(this.mapping, size);
      },
      { writer: true, invalidate: 'write' },
    );
  }

  /**
   * fallocate(KEEP_SIZE): the blocks of [off, off + len) are allocated (ENOSPC for all or none),
   * i_size and the data stay as they are. Replay reserves a long write's range so, before it
   * writes it a call at a time, so that the write fails whole or not at all, as one write(2) does.
   */
  fallocate(off: number, len: number): Promise<void> {
    return this.op(
      'fallocate',
      async () => {
        checkOffset('fallocate offset', off);
        checkOffset('fallocate length', len);
        checkFileLimit('fallocate', off, len, this.fs.maxFileSize);
        if (len === 0) return;
        const ps = this.fs.pageSize;
        await this.mapping.a_ops.reserve_blocks(Math.floor(off / ps), Math.floor((off + len - 1) / ps));
      },
      { writer: true },
    );
  }

  /** fallocate(PUNCH_HOLE | KEEP_SIZE), clamped to EOF. */
  punchHole(off: number, len: number): Promise<void> {
    return this.op(
      'punchHole',
      async () => {
        checkOffset('punch offset', off);
        checkOffset('punch length', len);
        await punch_hole(this.mapping, off, len);
      },
      { writer: true, invalidate: 'write' },
    );
  }

  /** O_DIRECT read: 512-byte aligned offset and length; short at EOF. */
  readDirect(off: number, len: number): Promise<Uint8Array> {
    return this.op(
      'readDirect',
      async () => {
        checkOffset('direct read offset', off);
        checkOffset('direct read length', len);
        checkDirectAlign('direct read', off, len);
        return dio_read(this.mapping, off, len);
      },
      { invalidate: 'read' },
    );
  }

  /** O_DIRECT write: 512-byte aligned offset and length; extends the file. */
  writeDirect(off: number, bytes: Uint8Array): Promise<void> {
    return this.op(
      'writeDirect',
      async () => {
        checkOffset('direct write offset', off);
        checkBytes('direct write bytes', bytes);
        checkDirectAlign('direct write', off, bytes.length);
        checkFileLimit('direct write', off, bytes.length, this.fs.maxFileSize);
        if (bytes.length === 0) return;
        const ps = this.fs.pageSize;
        await this.mapping.a_ops.reserve_blocks(
          Math.floor(off / ps),
          Math.floor((off + bytes.length - 1) / ps),
        );
        await dio_write(this.mapping, off, bytes);
      },
      { writer: true, invalidate: 'write' },
    );
  }

  /**
   * A shared CPU mapping of the file from offset 0, `length` bytes (default: the file-size limit,
   * so the file may grow under it). Loads are clamped to EOF; stores must lie within EOF. It is
   * made in one synchronous step (no other task runs meanwhile), as if under mmap_lock exclusive.
   */
  mmap(length?: number): VmArea {
    if (this.closed || !this.fs.isLive(this.generation)) {
      throw new HmmlabError('EBADF', `mmap on ${this.name}: the file is closed`);
    }
    const len = length ?? this.fs.maxFileSize;
    checkOffset('mmap length', len);
    checkFileLimit('mmap', 0, len, this.fs.maxFileSize);
    const nrPages = Math.ceil(len / this.fs.pageSize);
    return new VmArea(this.mapping, nrPages, this.fs.vmOwner);
  }

  /** close(2): the handle is EBADF after; the inode and its pages stay cached until unmount. */
  close(): Promise<void> {
    return this.op('close', async () => {
      this.closed = true;
    });
  }

  // ---- device threads on the file's pages (the device policy's device: mirror or migrate) ----

  /**
   * A device kernel over [off, off + len): off and len multiples of 4, within EOF (EINVAL
   * otherwise). ENODEV when the mount has no device.
   */
  private device(
    what: string,
    kind: KernelKind,
    params: KernelParams,
    sink?: DeviceOutputSink,
  ): Promise<DeviceKernelResult | null> {
    return this.op(what, () => this.deviceRun(what, kind, params, sink), { invalidate: 'read' });
  }

  private async deviceRun(
    what: string,
    kind: KernelKind,
    params: KernelParams,
    sink?: DeviceOutputSink,
  ): Promise<DeviceKernelResult | null> {
    const { off, len } = params;
    checkOffset(`${what} offset`, off);
    checkOffset(`${what} length`, len);
    if (off % 4 !== 0 || len % 4 !== 0) {
      throw new HmmlabError('EINVAL', `${what}: offset ${off} and length ${len} must be multiples of 4`);
    }
    if (off + len > this.mapping.size) {
      throw new HmmlabError(
        'EINVAL',
        `${what} at offset ${off} length ${len} runs past EOF ${this.mapping.size} of ${this.name}`,
      );
    }
    const policy = this.fs.policy;
    if (!isDevicePolicy(policy)) {
      throw new HmmlabError(
        'ENODEV',
        `${what} on ${this.name}: no device: mount with a device policy, mirror or migrate (policy is '${policy.name}')`,
      );
    }
    if (len === 0) return null;
    return policy.runDeviceKernel(this.mapping, kind, params, sink);
  }

  /** devwrite: one device thread per 4-byte word stores docs/oplog.md's pattern for `tag`. */
  async deviceWrite(off: number, len: number, tag: number): Promise<DeviceRun> {
    checkOffset('deviceWrite tag', tag);
    const r = await this.device('deviceWrite', 'devwrite', { off, len, tag });
    if (r?.run.failed.length) throw refusedError('write', this.name, r.run.failed);
    return r?.run ?? emptyRun();
  }

  /**
   * devread: the bytes of [off, off + len) as device threads load them. With `sink`, they go there
   * as each kernel chunk ends, in file order (sink(bytes, fileOffset); the view is valid during the
   * call only), and none is returned: a read of any length holds one chunk's bytes at a time.
   */
  async deviceRead(off: number, len: number, sink?: DeviceOutputSink): Promise<Uint8Array> {
    const r = await this.device('deviceRead', 'devread', { off, len }, sink);
    return r?.bytes ?? new Uint8Array(0);
  }

  /** `threads` device threads each atomicAdd 1 `iters` times over `words` u32 words at off. */
  async deviceAtomicInc(off: number, words: number, threads: number, iters: number): Promise<DeviceRun> {
    checkOffset('deviceAtomicInc words', words);
    const r = await this.device('deviceAtomicInc', 'atomic', { off, len: words * 4, threads, k: iters });
    if (r?.run.failed.length) throw refusedError('atomic write', this.name, r.run.failed);
    return r?.run ?? emptyRun();
  }

  /**
   * `threads` device threads each store one u32, its slot value (kernels.ts slotValue(tag, t)), to
   * the word t * floor(words / threads) of the `words` u32 words at off: a slot a thread.
   */
  async deviceSlotStore(off: number, words: number, threads: number, tag: number): Promise<DeviceRun> {
    checkOffset('deviceSlotStore words', words);
    checkOffset('deviceSlotStore tag', tag);
    const r = await this.device('deviceSlotStore', 'slots', { off, len: words * 4, threads, tag });
    if (r?.run.failed.length) throw refusedError('slot store', this.name, r.run.failed);
    return r?.run ?? emptyRun();
  }

  /** Per-page wrapping sums of the u32 words of [off, off + len), computed on the GPU. */
  async deviceChecksum(off: number, len: number): Promise<number[]> {
    const r = await this.device('deviceChecksum', 'checksum', { off, len });
    return (r?.checksums ?? []).map((c) => c.sum);
  }

  /**
   * Prefetch (cudaMemPrefetchAsync) the pages of [off, off + len) to the device, read-only or, with
   * `write`, writable: each page the device does not map with that access is serviced as a device
   * fault of that access would be, in batches, and mapped, without a kernel (mirror: the page stays
   * and the device gets a copy; migrate: the page moves). Within EOF (EINVAL otherwise); ENODEV
   * without a device. A write prefetch that page_mkwrite refuses fails with EFAULT naming the
   * pages, after the others were prefetched.
   */
  devicePrefetch(off: number, len: number, write = false): Promise<DevicePrefetch> {
    return this.op(
      'devicePrefetch',
      async () => {
        checkOffset('devicePrefetch offset', off);
        checkOffset('devicePrefetch length', len);
        if (off + len > this.mapping.size) {
          throw new HmmlabError(
            'EINVAL',
            `devicePrefetch at offset ${off} length ${len} runs past EOF ${this.mapping.size} of ${this.name}`,
          );
        }
        const policy = this.fs.policy;
        if (!isDevicePolicy(policy)) {
          throw new HmmlabError(
            'ENODEV',
            `devicePrefetch on ${this.name}: no device: mount with a device policy, mirror or migrate (policy is '${policy.name}')`,
          );
        }
        const ps = this.fs.pageSize;
        if (len === 0)
          return { pages: 0, serviced: 0, granted: 0, refused: [], batches: 0, bytesToDevice: 0 };
        const r = await policy.prefetch(
          this.mapping,
          Math.floor(off / ps),
          Math.floor((off + len - 1) / ps),
          write,
        );
        if (r.refused.length) {
          const pages = r.refused.map((f) => f.index);
          throw new HmmlabError(
            'EFAULT',
            `devicePrefetch (write) of page${pages.length > 1 ? 's' : ''} ${formatPages(pages)} of ${this.name} refused: ` +
              `${r.refused[0].message}; the other pages were prefetched`,
            { pages },
          );
        }
        return r;
      },
      // As a kernel's fault service: a truncate or punch of the range waits (invalidate_lock).
      { invalidate: 'read' },
    );
  }

  /** Dirty pages of this file right now (for tests and --stats). */
  get nrDirty(): number {
    let n = 0;
    for (const e of this.mapping.i_pages.values()) if (e.kind === 'page' && e.flags & PG_dirty) n++;
    return n;
  }
}

function emptyRun(): DeviceRun {
  return { faults: 0, uniqueFaults: 0, batches: 0, replays: 0, bytesToDevice: 0, bytesToHost: 0, failed: [] };
}
