/**
 * The reference model follows each rule of docs/oplog.md's table; its runs of (tag, range) give
 * the bytes a plain byte array gives, on random logs; a log over gigabytes costs a few runs.
 */
import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { eofError, sizeAfter } from '../../src/oplog/eof.ts';
import { modelOplog, OplogModel } from '../../src/oplog/model.ts';
import { fillPattern, patternBytes } from '../../src/oplog/pattern.ts';
import type { Op } from '../../src/oplog/schema.ts';
import { oplogArbitrary } from './arbitrary.ts';

const zeros = (n: number) => new Uint8Array(n);
function cat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function run(ops: Op[]): OplogModel {
  const m = new OplogModel();
  for (const op of ops) m.apply(op);
  return m;
}

describe('writes', () => {
  for (const op of ['write', 'mapwrite', 'diowrite'] as const) {
    test(`${op} past EOF extends the file; the gap reads as zeros`, () => {
      const m = run([{ op, off: 1024, len: 512, tag: 3 }]);
      expect(m.size).toBe(1536);
      expect(m.bytes()).toEqual(cat(zeros(1024), patternBytes(1024, 512, 3)));
    });
  }
  test('a zero-length write does not extend the file', () => {
    expect(run([{ op: 'write', off: 5000, len: 0, tag: 1 }]).size).toBe(0);
    expect(run([{ op: 'mapwrite', off: 5000, len: 0, tag: 1 }]).size).toBe(0);
  });
  test('devwrite overwrites within EOF and never extends', () => {
    const m = run([
      { op: 'write', off: 0, len: 100, tag: 1 },
      { op: 'devwrite', off: 8, len: 16, tag: 2 },
    ]);
    expect(m.size).toBe(100);
    expect(m.bytes()).toEqual(cat(patternBytes(0, 8, 1), patternBytes(8, 16, 2), patternBytes(24, 76, 1)));
  });
  test('a device op past EOF is an EOPLOG error naming the line', () => {
    const m = run([{ op: 'write', off: 0, len: 10, tag: 1 }]);
    expect(() => m.apply({ op: 'devread', off: 8, len: 4 }, 42)).toThrow(
      /^line 42: devread: range \[8, 12\) is past EOF/,
    );
  });
});

describe('reads', () => {
  const m = run([{ op: 'write', off: 0, len: 1000, tag: 9 }]);
  for (const op of ['read', 'mapread', 'dioread'] as const) {
    test(`${op} is short at EOF and empty past it`, () => {
      expect(m.apply({ op, off: 512, len: 1024 })).toEqual(patternBytes(512, 488, 9));
      expect(m.apply({ op, off: 1024, len: 512 })).toEqual(zeros(0));
      expect(m.apply({ op, off: 1000, len: 512 })).toEqual(zeros(0));
    });
  }
  test('devread returns the range', () => {
    expect(m.apply({ op: 'devread', off: 4, len: 8 })).toEqual(patternBytes(4, 8, 9));
  });
  test('reads return copies, not views of the model', () => {
    const r = m.apply({ op: 'read', off: 0, len: 4 })!;
    r[0] = 99;
    expect(m.bytes()[0]).toBe(patternBytes(0, 1, 9)[0]);
  });
});

describe('truncate and punch', () => {
  test('truncate shrinks, and growing again reads zeros where data was', () => {
    const m = run([
      { op: 'write', off: 0, len: 300, tag: 1 },
      { op: 'truncate', size: 100 },
      { op: 'truncate', size: 200 },
    ]);
    expect(m.size).toBe(200);
    expect(m.bytes()).toEqual(cat(patternBytes(0, 100, 1), zeros(100)));
  });
  test('a write past EOF after a shrink leaves zeros in the gap', () => {
    const m = run([
      { op: 'write', off: 0, len: 300, tag: 1 },
      { op: 'truncate', size: 10 },
      { op: 'write', off: 290, len: 10, tag: 2 },
    ]);
    expect(m.bytes()).toEqual(cat(patternBytes(0, 10, 1), zeros(280), patternBytes(290, 10, 2)));
  });
  test('punch zeroes the range, keeps the size, and is clamped to EOF', () => {
    const m = run([
      { op: 'write', off: 0, len: 100, tag: 1 },
      { op: 'punch', off: 90, len: 50 },
      { op: 'punch', off: 10, len: 5 },
    ]);
    expect(m.size).toBe(100);
    expect(m.bytes()).toEqual(cat(patternBytes(0, 10, 1), zeros(5), patternBytes(15, 75, 1), zeros(10)));
    m.apply({ op: 'punch', off: 500, len: 10 });
    expect(m.size).toBe(100);
  });
  test('fsync, dropcaches and remount change no data', () => {
    const ops: Op[] = [{ op: 'write', off: 3, len: 30, tag: 4 }];
    const before = modelOplog(ops).file;
    const after = modelOplog([...ops, { op: 'fsync' }, { op: 'dropcaches' }, { op: 'remount' }]).file;
    expect(after).toEqual(before);
  });
});

test('modelOplog returns each read and the final file', () => {
  const { reads, file } = modelOplog([
    { op: 'write', off: 0, len: 8, tag: 1 },
    { op: 'read', off: 4, len: 8 },
    { op: 'fsync' },
  ]);
  expect(reads).toEqual([null, patternBytes(4, 4, 1), null]);
  expect(file).toEqual(patternBytes(0, 8, 1));
});

/** The model as it was: the file as a plain byte array, each rule applied to its bytes. */
function byteArrayModel(ops: readonly Op[]): { reads: (Uint8Array | null)[]; file: Uint8Array } {
  let buf = new Uint8Array(0);
  let size = 0;
  const reads = ops.map((op) => {
    if (eofError(op, size)) throw new Error(`invalid log: ${JSON.stringify(op)}`);
    let out: Uint8Array | null = null;
    const grow = (n: number) => {
      if (n <= buf.length) return;
      const next = new Uint8Array(n);
      next.set(buf.subarray(0, size));
      buf = next;
    };
    switch (op.op) {
      case 'write':
      case 'mapwrite':
      case 'diowrite':
      case 'devwrite':
        if (op.len > 0) {
          grow(op.off + op.len);
          fillPattern(buf.subarray(op.off, op.off + op.len), op.off, op.tag);
        }
        break;
      case 'read':
      case 'mapread':
      case 'dioread':
      case 'devread':
        out = op.off >= size ? new Uint8Array(0) : buf.slice(op.off, Math.min(op.off + op.len, size));
        break;
      case 'truncate':
        if (op.size < size) buf.fill(0, op.size, size);
        else grow(op.size);
        break;
      case 'punch':
        if (op.off < size) buf.fill(0, op.off, Math.min(op.off + op.len, size));
        break;
      default:
        break;
    }
    size = sizeAfter(op, size);
    return out;
  });
  return { reads, file: buf.slice(0, size) };
}

describe('runs of (tag, range)', () => {
  test('give the bytes of a plain byte array on random logs', () => {
    fc.assert(
      fc.property(oplogArbitrary({ pageSize: 4096, maxFileSize: 64 * 1024, maxOps: 60 }), (ops) => {
        const want = byteArrayModel(ops);
        const got = modelOplog(ops);
        // Buffer.equals: toEqual walks typed arrays element by element, too slow for 200 logs.
        const same = (a: Uint8Array | null, b: Uint8Array | null) =>
          a === b || (a !== null && b !== null && Buffer.from(a).equals(Buffer.from(b)));
        expect(same(got.file, want.file), 'file').toBe(true);
        for (const [k, r] of got.reads.entries())
          expect(same(r, want.reads[k]), `read at op ${k}`).toBe(true);
      }),
      { numRuns: 200 },
    );
  });

  test('a log over 4 GiB costs a few runs, and reads anywhere are computed on demand', () => {
    const G = 2 ** 30;
    const m = run([
      { op: 'write', off: 0, len: 4 * G, tag: 1 },
      { op: 'devwrite', off: G, len: G, tag: 2 },
      { op: 'write', off: 2 * G, len: G, tag: 1 },
      { op: 'punch', off: 3 * G, len: 4096 },
      { op: 'truncate', size: 5 * G },
    ]);
    expect(m.size).toBe(5 * G);
    expect(m.runCount).toBe(4); // tag 1, tag 2, tag 1 (the rewrite joined), hole, tag 1
    expect(m.read(G - 2, 4)).toEqual(cat(patternBytes(G - 2, 2, 1), patternBytes(G, 2, 2)));
    expect(m.read(3 * G - 1, 2)).toEqual(cat(patternBytes(3 * G - 1, 1, 1), zeros(1)));
    expect(m.read(3 * G + 4094, 4)).toEqual(cat(zeros(2), patternBytes(3 * G + 4096, 2, 1)));
    expect(m.read(5 * G - 2, 10)).toEqual(zeros(2));
  });
});
