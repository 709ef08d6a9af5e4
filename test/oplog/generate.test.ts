/** The seeded generator: deterministic, valid, and covering the op mix it promises. */
import { expect, test } from 'vitest';
import { sizeAfter } from '../../src/oplog/eof.ts';
import { generateOplog, legalizeOplog } from '../../src/oplog/generate.ts';
import { modelOplog } from '../../src/oplog/model.ts';
import { validateOplog } from '../../src/oplog/parse.ts';
import type { Op } from '../../src/oplog/schema.ts';

test('the same seed gives the same log; another seed another', () => {
  const a = generateOplog({ seed: 1234, ops: 500 });
  expect(generateOplog({ seed: 1234, ops: 500 })).toEqual(a);
  expect(generateOplog({ seed: 1235, ops: 500 })).not.toEqual(a);
});

test('generated logs are valid, stay below maxFileSize and use every op but device ops by default', () => {
  for (const seed of [1, 2, 3]) {
    const ops = generateOplog({ seed, ops: 3000, maxFileSize: 64 * 1024 });
    expect(ops).toHaveLength(3000);
    validateOplog(ops);
    const names = new Set(ops.map((o) => o.op));
    expect(names.has('devread') || names.has('devwrite')).toBe(false);
    expect(names.size).toBe(11);
    const { file } = modelOplog(ops);
    expect(file.length).toBeLessThanOrEqual(64 * 1024);
  }
});

test('device ops when asked, each within EOF and word-aligned', () => {
  const ops = generateOplog({ seed: 99, ops: 2000, device: true });
  const dev = ops.filter((o) => o.op === 'devread' || o.op === 'devwrite');
  expect(dev.length).toBeGreaterThan(100);
  validateOplog(ops); // throws on a device op past EOF
});

test('the mix has aligned and unaligned offsets, reads past EOF and page-straddling ranges', () => {
  const ops = generateOplog({ seed: 5, ops: 5000, pageSize: 4096 });
  let size = 0;
  let pastEof = 0;
  let unaligned = 0;
  let pageAligned = 0;
  let straddle = 0;
  for (const o of ops) {
    if (o.op === 'read' && o.off >= size) pastEof++;
    if ('off' in o && o.len > 0) {
      if (o.off % 512 !== 0) unaligned++;
      if (o.off % 4096 === 0) pageAligned++;
      if (Math.floor(o.off / 4096) !== Math.floor((o.off + o.len - 1) / 4096)) straddle++;
    }
    size = sizeAfter(o, size);
  }
  expect(pastEof).toBeGreaterThan(20);
  expect(unaligned).toBeGreaterThan(500);
  expect(pageAligned).toBeGreaterThan(100);
  expect(straddle).toBeGreaterThan(500);
});

test('weights select ops: only reads and writes when the others weigh 0', () => {
  const zero = {
    mapwrite: 0,
    mapread: 0,
    diowrite: 0,
    dioread: 0,
    truncate: 0,
    punch: 0,
    fsync: 0,
    dropcaches: 0,
    remount: 0,
  };
  const ops = generateOplog({ seed: 3, ops: 200, weights: zero });
  expect(new Set(ops.map((o) => o.op))).toEqual(new Set(['read', 'write']));
});

test('bad options are EINVAL', () => {
  expect(() => generateOplog({ seed: 1, ops: -1 })).toThrow(/ops must be an integer/);
  expect(() => generateOplog({ seed: 1, maxFileSize: 10 })).toThrow(/maxFileSize/);
});

test('legalizeOplog clamps device ops into EOF, or drops them', () => {
  const ops: Op[] = [
    { op: 'devread', off: 0, len: 4 },
    { op: 'write', off: 0, len: 10, tag: 1 },
    { op: 'devwrite', off: 4, len: 12, tag: 2 },
    { op: 'devread', off: 16, len: 4 },
  ];
  const legal = legalizeOplog(ops);
  expect(legal).toEqual([
    { op: 'write', off: 0, len: 10, tag: 1 },
    { op: 'devwrite', off: 4, len: 4, tag: 2 },
  ]);
  validateOplog(legal);
});
