/**
 * The one parser of count and size options (src/bench/units.ts), used by replay, bench copy and
 * bench faults: the text it accepts, and an EINVAL naming the flag and the text for the rest.
 */
import { describe, expect, test } from 'vitest';
import { numberOf, parseCount, parsePageSize, parseSize, parseSizeList } from '../../src/bench/units.ts';

describe('numberOf', () => {
  test.each([
    ['4096', 4096],
    [' 7 ', 7],
    ['0', 0],
    ['64K', 65536],
    ['64k', 65536],
    ['64KiB', 65536],
    ['2M', 2 ** 21],
    ['16 MiB', 2 ** 24],
    ['1G', 2 ** 30],
    ['4T', 2 ** 42],
    ['8TiB', 2 ** 43],
    ['512B', 512],
  ])('%j is %i', (text, n) => {
    expect(numberOf(text)).toBe(n);
  });

  test.each(['', 'x', '-1', '1.5', '1e3', '4P', '0x10', '9007199254740992', '9999999999999999999K'])(
    '%j is not a number',
    (text) => {
      expect(numberOf(text)).toBeNaN();
    },
  );
});

describe('parseCount', () => {
  test('the fallback when not given; suffixes when given', () => {
    expect(parseCount('--iters', undefined, 5)).toBe(5);
    expect(parseCount('--host-pages', '1K', 1024)).toBe(1024);
    expect(parseCount('--blocks', '0', 0, 0)).toBe(0);
  });

  test('EINVAL naming the flag, the text and the lower bound', () => {
    expect(() => parseCount('--iters', '0', 5)).toThrow('bad --iters "0": expected a positive integer');
    expect(() => parseCount('--blocks', '-1', 0, 0)).toThrow(
      'bad --blocks "-1": expected a non-negative integer',
    );
    expect(() => parseCount('--threads', 'many', 1, 2)).toThrow(
      'bad --threads "many": expected an integer >= 2',
    );
    expect(() => parseCount('--batch', '1.5', 256)).toThrow(
      expect.objectContaining({ name: 'HmmlabError', code: 'EINVAL' }),
    );
  });
});

describe('parsePageSize', () => {
  test.each([
    ['4096', 4096],
    ['64K', 65536],
    ['2MiB', 2 ** 21],
  ])('%j is %i', (text, n) => {
    expect(parsePageSize(text, 4096)).toBe(n);
  });

  test.each(['3000', '2K', '4M', '12K', 'big'])('%j is EINVAL naming the range', (text) => {
    expect(() => parsePageSize(text, 4096)).toThrow(
      `bad --page-size "${text}": expected a power of two from 4096 (4K) to 2097152 (2M)`,
    );
  });
});

test('parseSize and parseSizeList: positive byte counts', () => {
  expect(parseSizeList('4K, 1M,')).toEqual([4096, 2 ** 20]);
  expect(() => parseSize('0')).toThrow('bad size "0": expected a positive byte count');
  expect(() => parseSizeList(' , ')).toThrow('bad size list " , ": no sizes');
});
