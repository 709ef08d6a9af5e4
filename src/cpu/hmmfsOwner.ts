/**
 * The owner API (protocol.ts) over an HmmFs, through its public methods: File.read/write/fsync/
 * truncate, File.mmap, VmArea.unmap, and filemap_fault for a CPU fault, run under the mount's
 * mutex as every public operation is (phase 2 of issue 9 replaces the mutex by page locks and
 * makes the page cache implement CpuOwnerApi itself). Descriptors and mappings live here, keyed
 * by fd and vma_id, as in the kernel's files_struct and mm.
 */
import { HmmlabError } from '../errors.ts';
import type { File, HmmFs } from '../fs/hmmfs.ts';
import { filemap_fault, type VmArea } from '../mm/memory.ts';
import { pte_none, pte_write } from '../mm/pte.ts';
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
   * A worker's CPU fault. Under the mount's mutex: recheck the PTE first (another thread may have
   * made it present since this one looked: a spurious fault, and a read fault must not downgrade
   * a writable PTE, as finish_fault leaves a PTE someone else installed), then filemap_fault.
   */
  fault(vmaId: number, index: number, write: boolean): Promise<void> {
    return this.fs.serialize(async () => {
      const vma = this.lookup(vmaId, 'fault');
      const m = vma.mapping;
      if (vma.closed || index >= vma.nrPages) {
        throw new HmmlabError('EFAULT', `fault on page ${index} of ${m.name} outside its mapping (SIGSEGV)`);
      }
      if (index * m.pageSize >= m.size) {
        throw new HmmlabError(
          'EFAULT',
          `fault on page ${index} of ${m.name} (offset ${index * m.pageSize}) past EOF ${m.size} (SIGBUS)`,
        );
      }
      const pte = Atomics.load(vma.pte, index);
      if (!pte_none(pte) && (!write || pte_write(pte))) {
        this.spuriousFaults++;
        return;
      }
      await filemap_fault(vma, index, write);
    });
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
