/**
 * The backing store of one file: a real file, read and written with pread/pwrite, synced with
 * fdatasync. It is the filesystem side of address_space_operations, block accounting included:
 * a block is one page-sized unit of the file, allocated on first write (write(2) reserves, an mmap
 * store's page_mkwrite allocates) against the mount's budget, and freed by truncate and punch.
 */
import fs from 'node:fs';
import { HmmlabError } from '../errors.ts';
import type { AddressSpaceOps } from '../mm/types.ts';

/** The mount's block budget, shared by its files. limit: Infinity when no budget was given. */
export interface BlockBudget {
  used: number;
  readonly limit: number;
}

const ZERO_CHUNK = 1 << 20;

export class BackingFile implements AddressSpaceOps {
  /** Page indices that own a block. */
  readonly blocks = new Set<number>();
  private fd: number;

  constructor(
    readonly path: string,
    readonly pageSize: number,
    private readonly budget: BlockBudget,
    create: boolean,
  ) {
    this.fd = fs.openSync(
      path,
      create ? fs.constants.O_RDWR | fs.constants.O_CREAT : fs.constants.O_RDWR,
      0o644,
    );
    this.scanBlocks();
  }

  get size(): number {
    return fs.fstatSync(this.fd).size;
  }

  /** On open, every page with a non-zero byte owns a block (a hole reads as zeros either way). */
  private scanBlocks(): void {
    const size = this.size;
    const buf = new Uint8Array(this.pageSize);
    for (let i = 0; i * this.pageSize < size; i++) {
      const n = this.preadFull(buf, i * this.pageSize);
      if (buf.subarray(0, n).some((b) => b !== 0)) {
        this.blocks.add(i);
        this.budget.used++;
      }
    }
  }

  private preadFull(buf: Uint8Array, pos: number): number {
    let done = 0;
    while (done < buf.length) {
      const n = fs.readSync(this.fd, buf, done, buf.length - done, pos + done);
      if (n === 0) break;
      done += n;
    }
    return done;
  }

  private pwriteFull(buf: Uint8Array, pos: number): void {
    let done = 0;
    while (done < buf.length) done += fs.writeSync(this.fd, buf, done, buf.length - done, pos + done);
  }

  async readpage(index: number, buf: Uint8Array): Promise<number> {
    const n = this.preadFull(buf, index * this.pageSize);
    buf.fill(0, n);
    return n;
  }

  async writepage(index: number, buf: Uint8Array, len: number): Promise<void> {
    this.pwriteFull(buf.subarray(0, len), index * this.pageSize);
  }

  private enospc(what: string, need: number): HmmlabError {
    return new HmmlabError(
      'ENOSPC',
      `${what} needs ${need} new block(s) of ${this.pageSize} bytes, ${this.budget.limit - this.budget.used} of ${this.budget.limit} left`,
    );
  }

  async page_mkwrite(index: number): Promise<void> {
    if (this.blocks.has(index)) return;
    if (this.budget.used >= this.budget.limit) throw this.enospc(`page_mkwrite of page ${index}`, 1);
    this.blocks.add(index);
    this.budget.used++;
  }

  async reserve_blocks(first: number, last: number): Promise<void> {
    let need = 0;
    for (let i = first; i <= last; i++) if (!this.blocks.has(i)) need++;
    if (this.budget.used + need > this.budget.limit)
      throw this.enospc(`write of pages ${first}..${last}`, need);
    for (let i = first; i <= last; i++) this.blocks.add(i);
    this.budget.used += need;
  }

  free_blocks(first: number, last: number): void {
    for (const b of [...this.blocks]) {
      if (b >= first && b <= last) {
        this.blocks.delete(b);
        this.budget.used--;
      }
    }
  }

  async set_size(size: number): Promise<void> {
    fs.ftruncateSync(this.fd, size);
  }

  async zero_range(off: number, len: number): Promise<void> {
    const end = Math.min(off + len, this.size);
    const zeros = new Uint8Array(Math.min(ZERO_CHUNK, Math.max(0, end - off)));
    for (let pos = off; pos < end; pos += zeros.length) {
      this.pwriteFull(zeros.subarray(0, Math.min(zeros.length, end - pos)), pos);
    }
  }

  async read_direct(off: number, buf: Uint8Array): Promise<number> {
    return this.preadFull(buf, off);
  }

  async write_direct(off: number, buf: Uint8Array): Promise<void> {
    this.pwriteFull(buf, off);
  }

  async fsync(): Promise<void> {
    fs.fdatasyncSync(this.fd);
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}
