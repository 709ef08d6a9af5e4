/**
 * fast-check arbitraries of op logs for the fsx-style property test. Ops are drawn one by one
 * (so fast-check shrinks a failing log by dropping ops and shrinking numbers), then made valid
 * as a whole: legalizeOplog clamps device ops into EOF, and tags are renumbered by position so
 * that every write's bytes differ from the bytes of the writes around it (fsx tags by op number).
 */
import fc from 'fast-check';
import { legalizeOplog } from '../../src/oplog/generate.ts';
import type { Op } from '../../src/oplog/schema.ts';

export interface OpArbitraryOptions {
  pageSize: number;
  /** Writes stay below this size; reads and punches reach a page past it. */
  maxFileSize: number;
  /** Include devread/devwrite (no device yet: false). */
  device?: boolean;
}

export function opArbitrary({ pageSize, maxFileSize, device = false }: OpArbitraryOptions): fc.Arbitrary<Op> {
  const pages = Math.floor(maxFileSize / pageSize);
  const offset = fc.oneof(
    { weight: 3, arbitrary: fc.integer({ min: 0, max: maxFileSize }) },
    { weight: 2, arbitrary: fc.integer({ min: 0, max: pages }).map((k) => k * pageSize) },
    // Around a page boundary: ranges straddle two pages.
    {
      weight: 2,
      arbitrary: fc
        .tuple(fc.integer({ min: 0, max: pages }), fc.integer({ min: -16, max: 16 }))
        .map(([k, d]) => Math.max(0, k * pageSize + d)),
    },
  );
  const length = fc.oneof(
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 16 }) },
    { weight: 1, arbitrary: fc.constant(pageSize) },
    { weight: 3, arbitrary: fc.integer({ min: 1, max: pageSize }) },
    { weight: 2, arbitrary: fc.integer({ min: 1, max: 3 * pageSize }) },
  );
  /** A range that a write may cover: off + len <= maxFileSize. */
  const writeRange = fc.tuple(offset, length).map(([off, len]) => {
    const o = Math.min(off, maxFileSize);
    return { off: o, len: Math.min(len, maxFileSize - o) };
  });
  const sector = (x: number) => x - (x % 512);
  const dioRange = writeRange.map(({ off, len }) => {
    const o = sector(off);
    return { off: o, len: Math.min(Math.max(512, sector(len)), sector(maxFileSize) - o) };
  });
  const word = (x: number) => x - (x % 4);
  const devRange = writeRange.map(({ off, len }) => ({ off: word(off), len: word(len) }));
  const readRange = fc
    .tuple(offset, length)
    .map(([off, len]) => ({ off: off + (off % 3 === 0 ? pageSize : 0), len }));

  const arbs: fc.WeightedArbitrary<Op>[] = [
    { weight: 20, arbitrary: writeRange.map((r) => ({ op: 'write', ...r, tag: 0 }) as Op) },
    { weight: 20, arbitrary: readRange.map((r) => ({ op: 'read', ...r }) as Op) },
    { weight: 10, arbitrary: writeRange.map((r) => ({ op: 'mapwrite', ...r, tag: 0 }) as Op) },
    { weight: 10, arbitrary: readRange.map((r) => ({ op: 'mapread', ...r }) as Op) },
    { weight: 5, arbitrary: dioRange.map((r) => ({ op: 'diowrite', ...r, tag: 0 }) as Op) },
    { weight: 5, arbitrary: dioRange.map((r) => ({ op: 'dioread', ...r }) as Op) },
    {
      weight: 5,
      arbitrary: fc
        .oneof(
          fc.integer({ min: 0, max: maxFileSize }),
          fc.integer({ min: 0, max: pages }).map((k) => k * pageSize),
        )
        .map((size) => ({ op: 'truncate', size }) as Op),
    },
    { weight: 5, arbitrary: readRange.map((r) => ({ op: 'punch', ...r }) as Op) },
    { weight: 3, arbitrary: fc.constant({ op: 'fsync' } as Op) },
    { weight: 2, arbitrary: fc.constant({ op: 'dropcaches' } as Op) },
    { weight: 1, arbitrary: fc.constant({ op: 'remount' } as Op) },
  ];
  if (device) {
    arbs.push(
      { weight: 10, arbitrary: devRange.map((r) => ({ op: 'devwrite', ...r, tag: 0 }) as Op) },
      { weight: 10, arbitrary: devRange.map((r) => ({ op: 'devread', ...r }) as Op) },
    );
  }
  return fc.oneof(...arbs);
}

/** Make a drawn sequence a valid log: device ops within EOF, tags numbered by position. */
export function finishOplog(ops: readonly Op[]): Op[] {
  return legalizeOplog(ops).map((o, k) => ('tag' in o ? { ...o, tag: k + 1 } : o));
}

export function oplogArbitrary(o: OpArbitraryOptions & { maxOps: number }): fc.Arbitrary<Op[]> {
  return fc.array(opArbitrary(o), { minLength: 1, maxLength: o.maxOps, size: 'max' }).map(finishOplog);
}
