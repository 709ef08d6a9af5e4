/**
 * The owner API (protocol.ts) of one process over an HmmFs: its descriptors and mappings, keyed by
 * fd and vma_id, as the kernel's files_struct and mm (the mm's mmap_lock is the mount's). Every
 * call is a public operation of the page cache, each a task of its own that runs beside the others
 * (File.read/write/fsync/..., File.mmap, VmArea.unmap) and a CPU fault is the page cache's
 * handle_mm_fault (HmmFs), which takes the locks of the fault path. `attachTlb` is how CpuThreads
 * tells the page cache whose TLB to shoot down.
 */
import { HmmlabError } from '../errors.ts';
import type { File, HmmFs } from '../fs/hmmfs.ts';
import type { VmArea } from '../mm/memory.ts';
import type { CpuTlbShootdown } from '../mm/rmap.ts';
import type { CpuOwnerApi, VmaDesc } from './protocol.ts';
import { vma_id } from './tlb.ts';

export class HmmFsCpuOwner implements CpuOwnerApi {
  private readonly files = new Map<number, File>();
  private readonly vmas = new Map<number, VmArea>();
  /** fd 0-2 are stdio's, as in a process. */
  private nextFd = 3;
  /** CPU faults that found the PTE already granting the access (another thread's fault won). */
  spuriousFaults = 0;

  constructor(readonly fs: HmmFs) {}

  /** The CPU threads' TLB: every PTE change of the page cache waits for its shootdown. */
  attachTlb(tlb: CpuTlbShootdown | null): void {
    this.fs.attachTlb(tlb);
  }

  /** Read-write syscalls past the basic ones: O_DIRECT, punch, fallocate (fsx from the workers). */
  readDirect(fd: number, off: number, len: number): Promise<Uint8Array> {
    return this.file(fd).readDirect(off, len);
  }

  writeDirect(fd: number, off: number, bytes: Uint8Array): Promise<void> {
    return this.file(fd).writeDirect(off, bytes);
  }

  punchHole(fd: number, off: number, len: number): Promise<void> {
    return this.file(fd).punchHole(off, len);
  }

  fallocate(fd: number, off: number, len: number): Promise<void> {
    return this.file(fd).fallocate(off, len);
  }

  async open(name: string, create = false): Promise<number> {
    const f = await this.fs.open(name, { create });
    const fd = this.nextFd++;
    this.files.set(fd, f);
    return fd;
  }

  async close(fd: number): Promise<void> {
    await this.file(fd).close();
    this.files.delete(fd);
  }

  read(fd: number, off: number, len: number): Promise<Uint8Array> {
    return this.file(fd).read(off, len);
  }

  write(fd: number, off: number, bytes: Uint8Array): Promise<void> {
    return this.file(fd).write(off, bytes);
  }

  fsync(fd: number): Promise<void> {
    return this.file(fd).fsync();
  }

  truncate(fd: number, size: number): Promise<void> {
    return this.file(fd).truncate(size);
  }

  async size(fd: number): Promise<number> {
    return this.file(fd).size;
  }

  async mmap(fd: number, length?: number): Promise<VmaDesc> {
    return this.share(this.file(fd).mmap(length));
  }

  /** Make a VmArea the owner thread made visible to the workers (one mm for all threads). */
  share(vma: VmArea): VmaDesc {
    const id = vma_id(vma.pte);
    this.vmas.set(id, vma);
    return this.desc(id, vma);
  }

  async munmap(vmaId: number): Promise<void> {
    const vma = this.vmas.get(vmaId);
    if (!vma) return; // munmap of a range with no mapping is not an error
    this.vmas.delete(vmaId);
    await vma.unmap();
  }

  async vma(vmaId: number): Promise<VmaDesc> {
    return this.desc(vmaId, this.lookup(vmaId, 'vma'));
  }

  /**
   * A worker's CPU fault: the page cache's handle_mm_fault, which looks at the PTE again under its
   * locks (another thread's fault may have made it present since this one looked: a spurious
   * fault, and a read fault must not downgrade a writable PTE, as finish_fault leaves a PTE someone
   * else installed).
   */
  async fault(vmaId: number, index: number, write: boolean): Promise<void> {
    const vma = this.lookup(vmaId, 'fault');
    if ((await this.fs.handle_mm_fault(vma, index, write)) === 'spurious') this.spuriousFaults++;
  }

  private file(fd: number): File {
    const f = this.files.get(fd);
    if (!f) throw new HmmlabError('EBADF', `fd ${fd} is not open`);
    return f;
  }

  private lookup(vmaId: number, what: string): VmArea {
    const vma = this.vmas.get(vmaId);
    if (!vma) throw new HmmlabError('EFAULT', `${what}: no mapping ${vmaId} (SIGSEGV)`);
    return vma;
  }

  private desc(id: number, vma: VmArea): VmaDesc {
    return {
      id,
      pte: vma.pte.buffer as SharedArrayBuffer,
      pool: vma.mapping.host.pool.sab,
      pageSize: vma.mapping.pageSize,
      nrPages: vma.nrPages,
      name: vma.mapping.name,
    };
  }
}
