/**
 * The backing store of one file: a real file, read and written with pread/pwrite, synced with
 * fdatasync. It is the filesystem side of address_space_operations, block accounting included:
 * a block is one page-sized unit of the file, allocated on first write (write(2) reserves, an mmap
 * store's page_mkwrite allocates) against the mount's budget, and freed by truncate and punch.
 */
import fs from 'node:fs';
import { HmmlabError } from '../errors.ts';
import { type FaultInjector, injectedError, NO_INJECT } from '../inject/inject.ts';
import type { AddressSpaceOps } from '../mm/types.ts';

/** The mount's block budget, shared by its files. limit: Infinity when no budget was given. */
export interface BlockBudget {
  used: number;
  readonly limit: number;
}

const ZERO_CHUNK = 1 << 20;
/** Bytes the open-time block scan reads at once. */
const SCAN_CHUNK = 1 << 20;

/** A bit per page index, grown on demand: a file's blocks cost 1 bit a page, whatever its size. */
class PageBits {
  private words = new Uint32Array(64);

  has(i: number): boolean {
    const w = i >>> 5;
    return w < this.words.length && (this.words[w] & (1 << (i & 31))) !== 0;
  }

  /** Set bit i; false if it was set. */
  add(i: number): boolean {
    const w = i >>> 5;
    if (w >= this.words.length) {
      const next = new Uint32Array(Math.max(w + 1, 2 * this.words.length));
      next.set(this.words);
      this.words = next;
    }
    if (this.words[w] & (1 << (i & 31))) return false;
    this.words[w] |= 1 << (i & 31);
    return true;
  }

  /** Clear the bits in [first, last]; how many were set. */
  clearRange(first: number, last: number): number {
    let n = 0;
    const end = Math.min(last, this.words.length * 32 - 1);
    for (let i = first; i <= end; i++) {
      const w = i >>> 5;
      if (this.words[w] === 0 && (i & 31) === 0) {
        i += 31; // a whole empty word
        continue;
      }
      const bit = 1 << (i & 31);
      if (this.words[w] & bit) {
        this.words[w] &= ~bit;
        n++;
      }
    }
    return n;
  }
}

export class BackingFile implements AddressSpaceOps {
  /** Page indices that own a block. */
  private readonly blocks = new PageBits();
  private fd: number;

  constructor(
    readonly path: string,
    readonly pageSize: number,
    private readonly budget: BlockBudget,
    create: boolean,
    /** Fault injection (pread, pwrite, pwrite-short, fdatasync, page_mkwrite). */
    private readonly inject: FaultInjector = NO_INJECT,
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
    const ps = this.pageSize;
    const buf = Buffer.alloc(Math.max(ps, SCAN_CHUNK));
    const zeros = Buffer.alloc(buf.length);
    for (let pos = 0; pos < size; pos += buf.length) {
      const n = this.preadFull(buf, pos);
      // memcmp against zeros: a sparse file of gigabytes is mostly holes.
      if (buf.subarray(0, n).equals(zeros.subarray(0, n))) continue;
      for (let at = 0; at < n; at += ps) {
        const end = Math.min(n, at + ps);
        if (!buf.subarray(at, end).equals(zeros.subarray(at, end)) && this.blocks.add((pos + at) / ps)) {
          this.budget.used++;
        }
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

  /** A read of the backing file for the page cache: an injected `pread` fails it with EIO. */
  private pread(buf: Uint8Array, pos: number, what: string): number {
    if (this.inject.should_fail('pread')) {
      throw injectedError('pread', new HmmlabError('EIO', `${what} of ${this.path}: pread: I/O error`));
    }
    return this.preadFull(buf, pos);
  }

  /**
   * A write to the backing file, completed however short each pwrite(2) returns: an injected
   * `pwrite-short` makes the first one write only part (the loop writes the rest), an injected
   * `pwrite` fails it with EIO before a byte is written.
   */
  private pwriteFull(buf: Uint8Array, pos: number, what: string): void {
    if (this.inject.should_fail('pwrite')) {
      throw injectedError('pwrite', new HmmlabError('EIO', `${what} of ${this.path}: pwrite: I/O error`));
    }
    let done = 0;
    if (buf.length > 1 && this.inject.should_fail('pwrite-short')) {
      done += fs.writeSync(this.fd, buf, 0, Math.floor(buf.length / 2), pos);
    }
    while (done < buf.length) done += fs.writeSync(this.fd, buf, done, buf.length - done, pos + done);
  }

  async readpage(index: number, buf: Uint8Array): Promise<number> {
    const n = this.pread(buf, index * this.pageSize, `readpage of page ${index}`);
    buf.fill(0, n);
    return n;
  }

  /** Consecutive pages in one preadv(2) (a short one is continued); an injected `pread` fails them all. */
  async readpages(first: number, bufs: Uint8Array[]): Promise<void> {
    const ps = this.pageSize;
    if (this.inject.should_fail('pread')) {
      throw injectedError(
        'pread',
        new HmmlabError(
          'EIO',
          `readpage of page ${first} (pages ${first}..${first + bufs.length - 1} read together) of ${this.path}: pread: I/O error`,
        ),
      );
    }
    const want = bufs.length * ps;
    let done = 0;
    while (done < want) {
      const k = Math.floor(done / ps);
      const views = [
        bufs[k].subarray(done - k * ps, ps),
        ...bufs.slice(k + 1, Math.min(bufs.length, k + 1024)),
      ];
      const n = fs.readvSync(this.fd, views, first * ps + done);
      if (n === 0) break;
      done += n;
    }
    for (let k = Math.floor(done / ps); k < bufs.length; k++) bufs[k].fill(0, Math.max(0, done - k * ps), ps);
  }

  async writepage(index: number, buf: Uint8Array, len: number): Promise<void> {
    this.pwriteFull(buf.subarray(0, len), index * this.pageSize, `writepage of page ${index}`);
  }

  private enospc(what: string, need: number): HmmlabError {
    return new HmmlabError(
      'ENOSPC',
      `${what} needs ${need} new block(s) of ${this.pageSize} bytes, ${this.budget.limit - this.budget.used} of ${this.budget.limit} left`,
    );
  }

  async page_mkwrite(index: number): Promise<void> {
    if (this.inject.should_fail('page_mkwrite')) {
      throw injectedError(
        'page_mkwrite',
        new HmmlabError('ENOSPC', `page_mkwrite of page ${index}: the filesystem refused it (no space)`),
      );
    }
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
    this.budget.used -= this.blocks.clearRange(first, last);
  }

  async set_size(size: number): Promise<void> {
    fs.ftruncateSync(this.fd, size);
  }

  async zero_range(off: number, len: number): Promise<void> {
    const end = Math.min(off + len, this.size);
    const zeros = new Uint8Array(Math.min(ZERO_CHUNK, Math.max(0, end - off)));
    for (let pos = off; pos < end; pos += zeros.length) {
      this.pwriteFull(zeros.subarray(0, Math.min(zeros.length, end - pos)), pos, 'punch hole');
    }
  }

  async read_direct(off: number, buf: Uint8Array): Promise<number> {
    return this.pread(buf, off, `direct read at offset ${off}`);
  }

  async write_direct(off: number, buf: Uint8Array): Promise<void> {
    this.pwriteFull(buf, off, `direct write at offset ${off}`);
  }

  /**
   * fdatasync(2). A failure is reported to this call only (as errseq does); the data the page cache
   * wrote stays in the backing file, so the next fsync syncs it again: nothing is marked lost.
   */
  async fsync(): Promise<void> {
    if (this.inject.should_fail('fdatasync')) {
      throw injectedError('fdatasync', new HmmlabError('EIO', `fdatasync of ${this.path}: I/O error`));
    }
    fs.fdatasyncSync(this.fd);
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}
