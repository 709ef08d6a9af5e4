/** Argument checks shared by the fs and the mapping paths: each names the argument and its value. */
import { HmmlabError } from '../errors.ts';

export function checkOffset(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new HmmlabError('EINVAL', `${name} must be a non-negative integer, got ${String(v)}`);
  }
  return v;
}

export function checkBytes(name: string, v: unknown): Uint8Array {
  if (!(v instanceof Uint8Array)) {
    throw new HmmlabError('EINVAL', `${name} must be a Uint8Array, got ${typeof v}`);
  }
  return v;
}

/** The default file-size limit of a mount: 1 GiB. */
export const DEFAULT_MAX_FILE_SIZE = 2 ** 30;
/**
 * The largest file-size limit a mount takes, 8 TiB: ext4's largest file (4 KiB blocks) is 16 TiB,
 * and 2^31 device pages of 4 KiB (a device fault names a page in 31 bits) are 8 TiB.
 */
export const MAX_FILE_SIZE_LIMIT = 2 ** 43;

/** EFBIG when [off, off + len) runs past the file-size limit. */
export function checkFileLimit(what: string, off: number, len: number, limit: number): void {
  if (off + len > limit) {
    throw new HmmlabError(
      'EFBIG',
      `${what} at offset ${off} length ${len} ends at ${off + len}, past the file-size limit ${limit}`,
    );
  }
}

/** O_DIRECT: offset and length must be multiples of 512 (the logical block size). */
export function checkDirectAlign(what: string, off: number, len: number): void {
  if (off % 512 !== 0) throw new HmmlabError('EINVAL', `${what}: offset ${off} is not a multiple of 512`);
  if (len % 512 !== 0) throw new HmmlabError('EINVAL', `${what}: length ${len} is not a multiple of 512`);
}
