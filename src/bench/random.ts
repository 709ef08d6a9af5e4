/**
 * Seeded random bytes (xorshift32, a word at a time): fast enough for 256 MiB, and a failing test
 * can print its seed and be replayed.
 */
export function fillRandom(bytes: Uint8Array, seed: number): Uint8Array {
  let x = seed >>> 0 || 0x9e3779b9;
  const words = bytes.byteLength >>> 2;
  const aligned = bytes.byteOffset % 4 === 0;
  const view = aligned ? new Uint32Array(bytes.buffer, bytes.byteOffset, words) : undefined;
  const next = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  if (view) {
    for (let i = 0; i < words; i++) view[i] = next();
  } else {
    for (let i = 0; i < words * 4; i += 4) {
      const w = next();
      bytes[i] = w;
      bytes[i + 1] = w >>> 8;
      bytes[i + 2] = w >>> 16;
      bytes[i + 3] = w >>> 24;
    }
  }
  for (let i = words * 4; i < bytes.byteLength; i++) bytes[i] = next();
  return bytes;
}

/** A fresh seed, to be printed by whoever uses it. */
export function newSeed(): number {
  return (Math.random() * 0x1_0000_0000) >>> 0;
}

/** Index of the first byte where a and b differ (a length difference counts), or -1 when equal. */
export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.byteLength, b.byteLength);
  if (Buffer.from(a.buffer, a.byteOffset, n).equals(Buffer.from(b.buffer, b.byteOffset, n))) {
    return a.byteLength === b.byteLength ? -1 : n;
  }
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}
