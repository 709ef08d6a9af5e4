/**
 * Emulated CPU PTEs: one Int32 word per page of a VmArea, in a SharedArrayBuffer so that CPU worker
 * threads can check them with Atomics before each access. A word is 0 (not present) or
 * ((slot + 1) << 2) | PTE_R | PTE_W?: the pool slot it maps and its permission.
 */
export const PTE_R = 1;
export const PTE_W = 2;

export const pte_none = (pte: number): boolean => pte === 0;
export const pte_write = (pte: number): boolean => (pte & PTE_W) !== 0;
export const pte_slot = (pte: number): number => (pte >>> 2) - 1;
export const mk_pte = (slot: number, writable: boolean): number =>
  ((slot + 1) << 2) | PTE_R | (writable ? PTE_W : 0);
export const pte_wrprotect = (pte: number): number => pte & ~PTE_W;
