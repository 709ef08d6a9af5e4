/** The data pattern of docs/oplog.md: byte(x) = (x + 7*tag) mod 251, filled fast for large lengths. */
import { expect, test } from 'vitest';
import { fillPattern, patternByte, patternBytes, tagOf } from '../../src/oplog/pattern.ts';

test('patternByte is (x + 7*tag) mod 251', () => {
  expect(patternByte(0, 0)).toBe(0);
  expect(patternByte(250, 0)).toBe(250);
  expect(patternByte(251, 0)).toBe(0);
  expect(patternByte(10, 3)).toBe(31);
  expect(patternByte(4096, 1000)).toBe((4096 + 7000) % 251);
  // Exact for offsets and tags far past 2^32 (no overflow in 7*tag).
  const x = 2 ** 52 + 12345;
  const tag = 2 ** 50 + 7;
  expect(patternByte(x, tag)).toBe(Number((BigInt(x) + 7n * BigInt(tag)) % 251n));
});

test('fillPattern matches patternByte at every byte, for lengths around the period and offsets', () => {
  for (const off of [0, 1, 250, 251, 4095, 4096, 1_000_003]) {
    for (const len of [0, 1, 5, 250, 251, 252, 502, 503, 4096, 70_000]) {
      for (const tag of [0, 1, 36, 250, 9999]) {
        const b = patternBytes(off, len, tag);
        expect(b.length).toBe(len);
        for (let k = 0; k < len; k++) {
          if (b[k] !== patternByte(off + k, tag)) {
            throw new Error(
              `off ${off} len ${len} tag ${tag}: byte ${k} is ${b[k]}, want ${patternByte(off + k, tag)}`,
            );
          }
        }
      }
    }
  }
});

test('fillPattern fills a subarray in place', () => {
  const buf = new Uint8Array(1000);
  fillPattern(buf.subarray(100, 200), 100, 5);
  expect(buf[99]).toBe(0);
  expect(buf[100]).toBe(patternByte(100, 5));
  expect(buf[199]).toBe(patternByte(199, 5));
  expect(buf[200]).toBe(0);
});

test('fillPattern of 64 MiB is fast (doubling copies, not a byte loop)', () => {
  const t0 = performance.now();
  const b = patternBytes(12345, 64 << 20, 77);
  const ms = performance.now() - t0;
  expect(b[(64 << 20) - 1]).toBe(patternByte(12345 + (64 << 20) - 1, 77));
  expect(ms).toBeLessThan(1000);
});

test('tagOf recovers the tag (mod 251) that wrote a byte', () => {
  for (const tag of [0, 1, 7, 100, 250]) {
    for (const x of [0, 3, 4096, 99_999]) expect(tagOf(x, patternByte(x, tag))).toBe(tag);
  }
});
