/**
 * Direct I/O (mm/filemap.c generic_file_direct_write / kiocb_write_and_wait): the page cache is
 * written back over the range first (device-held data included), and for a write the cached pages
 * of the range are then dropped, so that neither the cache nor the device serves stale data after.
 */
import { asMapping } from './mapping.ts';
import { truncate_inode_pages_range } from './truncate.ts';
import type { AddressSpace } from './types.ts';
import { filemap_write_and_wait_range } from './writeback.ts';

export async function dio_read(mapping: AddressSpace, off: number, len: number): Promise<Uint8Array> {
  const m = asMapping(mapping);
  const ps = m.pageSize;
  m.host.vmstat.count('dio_read');
  const end = Math.min(off + len, m.size);
  if (end <= off) return new Uint8Array(0);
  const n = await filemap_write_and_wait_range(
    m,
    Math.floor(off / ps),
    Math.floor((end - 1) / ps),
    'direct-io',
  );
  m.host.vmstat.count('dio_pages_written_back', n);
  const out = new Uint8Array(end - off);
  const got = await m.a_ops.read_direct(off, out);
  return got === out.length ? out : out.subarray(0, got);
}

/** Blocks are the caller's to reserve (ENOSPC before anything changes). */
export async function dio_write(mapping: AddressSpace, off: number, bytes: Uint8Array): Promise<void> {
  const m = asMapping(mapping);
  const ps = m.pageSize;
  m.host.vmstat.count('dio_write');
  if (bytes.length === 0) return;
  const first = Math.floor(off / ps);
  const last = Math.floor((off + bytes.length - 1) / ps);
  const n = await filemap_write_and_wait_range(m, first, last, 'direct-io');
  m.host.vmstat.count('dio_pages_written_back', n);
  await truncate_inode_pages_range(m, first, last);
  await m.a_ops.write_direct(off, bytes);
  if (off + bytes.length > m.size) {
    m.size = off + bytes.length;
    await m.a_ops.set_size(m.size);
  }
}
