/**
 * The data pattern of docs/oplog.md: the op with tag `t` writes byte (x + 7t) mod 251 at file offset x,
 * so every byte on disk says which op wrote it. 251 is prime and not a power of two, so the pattern
 * never lines up with a page, a sector or a 4-byte word.
 */

export const PATTERN_MODULUS = 251;

/** One period of the pattern: 0, 1, ..., 250. */
const PERIOD = Uint8Array.from({ length: PATTERN_MODULUS }, (_, k) => k);

/** The byte that the op with `tag` writes at file offset `x`. Exact for any safe integers. */
export function patternByte(x: number, tag: number): number {
  return ((x % PATTERN_MODULUS) + 7 * (tag % PATTERN_MODULUS)) % PATTERN_MODULUS;
}

/**
 * Fill `dst` with the pattern of `tag` as if dst[0] sat at file offset `off`. Fast for large
 * lengths: one period by hand, then doubling copyWithin (the pattern repeats every 251 bytes).
 */
export function fillPattern(dst: Uint8Array, off: number, tag: number): Uint8Array {
  const len = dst.length;
  if (len === 0) return dst;
  const v = patternByte(off, tag);
  let filled = Math.min(len, PATTERN_MODULUS - v);
  dst.set(PERIOD.subarray(v, v + filled), 0);
  if (filled < len) {
    const more = Math.min(len - filled, v);
    dst.set(PERIOD.subarray(0, more), filled);
    filled += more;
  }
  // filled is now a whole period (or len): dst[k] = dst[k - 251] from here on.
  while (filled < len) {
    const n = Math.min(filled, len - filled);
    dst.copyWithin(filled, 0, n);
    filled += n;
  }
  return dst;
}

/** The `len` bytes that the op with `tag` writes at file offset `off`. */
export function patternBytes(off: number, len: number, tag: number): Uint8Array {
  return fillPattern(new Uint8Array(len), off, tag);
}

/** The tag whose pattern holds byte `b` at offset `x` (mod 251): for reading a dump. */
export function tagOf(x: number, b: number): number {
  // 7 * 36 = 252 = 1 (mod 251), so 36 is 7's inverse.
  return (((b - (x % PATTERN_MODULUS) + PATTERN_MODULUS) % PATTERN_MODULUS) * 36) % PATTERN_MODULUS;
}
