/**
 * Shrinking a failing op log by delta debugging (src/oplog/shrink.ts): chunks of ops go while the
 * smaller log still fails the same way; a candidate that fails early is cut after its failing op;
 * a device op left past EOF by a removal is clamped, so every candidate is a valid log; the number
 * of replays is bounded. The predicate here is a plain function of the log (the CLI's replays
 * are tested in stress.test.ts).
 */
import { describe, expect, test } from 'vitest';
import { generateOplog } from '../../src/oplog/generate.ts';
import { validateOplog } from '../../src/oplog/parse.ts';
import type { Op } from '../../src/oplog/schema.ts';
import { shrinkOplog } from '../../src/oplog/shrink.ts';

const tagOf = (op: Op) => ('tag' in op ? op.tag : -1);

describe('shrinkOplog', () => {
  test('keeps only the ops the failure needs, in their order', async () => {
    const ops = generateOplog({ seed: 3, ops: 300, device: true });
    const needed = ops
      .filter((op) => 'tag' in op)
      .map(tagOf)
      .filter((t) => t === 7 || t === 40);
    expect(needed).toEqual([7, 40]);
    // "Fails" once the ops tagged 7 and 40 have both run: at the later of the two.
    const fails = async (log: readonly Op[]) => {
      const a = log.findIndex((op) => tagOf(op) === 7);
      const b = log.findIndex((op) => tagOf(op) === 40);
      return a >= 0 && b >= 0 ? Math.max(a, b) : null;
    };
    const seen: Op[][] = [];
    const r = await shrinkOplog(ops, {
      maxReplays: 1000,
      fails: async (log) => {
        seen.push([...log]);
        return fails(log);
      },
    });
    expect(r.ops.map(tagOf)).toEqual([7, 40]);
    expect(r.bounded).toBe(false);
    for (const log of seen) expect(() => validateOplog(log)).not.toThrow(); // every candidate is valid
  });

  test('stops at the replay bound with the best log so far, and reports progress', async () => {
    const ops = generateOplog({ seed: 4, ops: 200 });
    const progress: number[] = [];
    const r = await shrinkOplog(ops, {
      maxReplays: 5,
      fails: async (log) => (log.length > 0 ? log.length - 1 : null),
      onProgress: (n) => progress.push(n),
    });
    expect(r.replays).toBe(5);
    expect(r.bounded).toBe(true);
    expect(progress).toEqual([1, 2, 3, 4, 5]);
    expect(r.ops.length).toBeLessThan(ops.length);
  });

  test('a log that nothing smaller reproduces comes back whole', async () => {
    const ops = generateOplog({ seed: 5, ops: 20 });
    const r = await shrinkOplog(ops, {
      fails: async (log) => (log.length === ops.length ? log.length - 1 : null),
    });
    expect(r.ops).toEqual(ops);
    expect(r.bounded).toBe(false);
  });
});
