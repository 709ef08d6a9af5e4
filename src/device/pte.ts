/**
 * The device PTE: one u32 per page index of a device address space (shaders/mmu.wgsl reads the
 * same bits). READ and WRITE are the permissions the host grants; DIRTY is set by the first store
 * of a kernel (atomicOr), so a writable page that was never written is not copied back; the FAIL
 * bits make an access fail instead of fault (the host refused it: EFAULT), for one launch.
 */

export const PTE_READ = 0x8000_0000;
export const PTE_WRITE = 0x4000_0000;
export const PTE_DIRTY = 0x2000_0000;
export const PTE_FAIL_READ = 0x1000_0000;
export const PTE_FAIL_WRITE = 0x0800_0000;
export const PTE_FRAME_MASK = 0x07ff_ffff;
/** Every bit: a clear mask that empties the PTE. */
export const PTE_ALL = 0xffff_ffff;

/** Device permission of a page: none, read-only, read-write (write implies read). */
export type DevicePerm = 'none' | 'ro' | 'rw';

export const MAX_FRAMES = PTE_FRAME_MASK + 1;

export function permBits(perm: DevicePerm): number {
  return perm === 'rw' ? (PTE_READ | PTE_WRITE) >>> 0 : perm === 'ro' ? PTE_READ : 0;
}

export function pteEncode(frame: number, perm: DevicePerm): number {
  return perm === 'none' ? 0 : (permBits(perm) | (frame & PTE_FRAME_MASK)) >>> 0;
}

export interface DecodedPte {
  frame: number | null;
  perm: DevicePerm;
  dirty: boolean;
  failRead: boolean;
  failWrite: boolean;
}

export function pteDecode(word: number): DecodedPte {
  const w = word >>> 0;
  const perm: DevicePerm = w & PTE_WRITE ? 'rw' : w & PTE_READ ? 'ro' : 'none';
  return {
    frame: perm === 'none' ? null : w & PTE_FRAME_MASK,
    perm,
    dirty: (w & PTE_DIRTY) !== 0,
    failRead: (w & PTE_FAIL_READ) !== 0,
    failWrite: (w & PTE_FAIL_WRITE) !== 0,
  };
}

export function pteDirty(word: number): boolean {
  return ((word >>> 0) & PTE_DIRTY) !== 0;
}
