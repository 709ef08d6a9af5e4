/**
 * fsx-style property test (issue 3): random op sequences replayed on HmmFs with the reference
 * model checking every read, and the backing file on disk after every fsync and remount and at
 * the end (replayOplog's check mode), under host-page budgets of 4-16 pages so that reclaim and
 * writeback interleave with every path, for page sizes 4 KiB and 64 KiB. checkInvariants runs after
 * every op (the host side: index, LRU, mapcount, CPU PTEs, page locks, writeback, page states).
 *
 * A failure prints the fast-check seed, shrinks the log, saves it as JSON Lines and prints the
 * `hmmlab replay` command that reproduces it. HMMLAB_FSX_SEED=<seed> reruns a given seed;
 * HMMLAB_FSX_RUNS=<n> sequences per round (rounds run until HMMLAB_FSX_MIN_OPS ops per page size,
 * 10,000 by default).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { expect, test } from 'vitest';
import { replayOplog } from '../../src/oplog/replay.ts';
import { type Op, serializeOplog } from '../../src/oplog/schema.ts';
import { checkInvariants } from '../../src/policy/invariants.ts';
import { oplogArbitrary } from './arbitrary.ts';

const SEED = process.env.HMMLAB_FSX_SEED ? Number(process.env.HMMLAB_FSX_SEED) : Date.now() % 0x7fffffff;
const RUNS = Number(process.env.HMMLAB_FSX_RUNS ?? 30);
/** Per page size; two page sizes make the 20,000 ops per run that issue 3 asks for. */
const MIN_OPS = Number(process.env.HMMLAB_FSX_MIN_OPS ?? 10_000);
const MAX_OPS = 500;

interface FsxCase {
  hostPages: number;
  ops: Op[];
}

async function saveFailure(c: FsxCase, pageSize: number, seed: number): Promise<string> {
  const dir = join(tmpdir(), 'hmmlab-fsx-failures');
  await mkdir(dir, { recursive: true });
  const path = join(dir, `fsx-seed${seed}-page${pageSize}-host${c.hostPages}.jsonl`);
  await writeFile(path, serializeOplog(c.ops));
  return path;
}

for (const pageSize of [4096, 65536]) {
  test(`fsx: random op sequences match the reference model, page size ${pageSize / 1024} KiB`, async () => {
    console.log(`fsx page size ${pageSize}: seed ${SEED} (HMMLAB_FSX_SEED=${SEED} reruns it)`);
    const arb = fc.record({
      hostPages: fc.integer({ min: 4, max: 16 }),
      // Twice the largest budget: reclaim runs on every pass over the file.
      ops: oplogArbitrary({ pageSize, maxFileSize: 32 * pageSize, maxOps: MAX_OPS }),
    });
    let ops = 0;
    let reads = 0;
    let diskChecks = 0;
    let invariantChecks = 0;
    // Rounds of RUNS sequences until MIN_OPS ops have run: lengths are random, the total is not.
    for (let round = 0; round === 0 || ops < MIN_OPS; round++) {
      const seed = SEED + round;
      const details = await fc.check(
        fc.asyncProperty(arb, async (c) => {
          const r = await replayOplog(c.ops, {
            pageSize,
            hostPages: c.hostPages,
            check: true,
            afterOp: async (fs) => {
              await checkInvariants(fs);
              invariantChecks++;
            },
          });
          ops += r.ops;
          reads += r.reads.length;
          diskChecks += r.diskChecks;
        }),
        { seed, numRuns: RUNS },
      );
      if (details.failed) {
        const c = details.counterexample![0];
        const path = await saveFailure(c, pageSize, seed);
        const message =
          `fsx failed: page size ${pageSize}, fast-check seed ${seed}, path ${details.counterexamplePath}, ` +
          `${details.numShrinks} shrinks\n${String(details.errorInstance)}\n` +
          `shrunk log (${c.ops.length} ops, host pages ${c.hostPages}) saved as ${path}\n` +
          `reproduce: node bin/hmmlab.mjs replay ${path} --check --page-size ${pageSize} --host-pages ${c.hostPages}\n` +
          `rerun: HMMLAB_FSX_SEED=${seed} npx vitest run test/oplog/fsx.test.ts`;
        console.error(message);
        throw new Error(message);
      }
    }
    console.log(
      `fsx page size ${pageSize}: ${ops} ops, ${reads} reads checked, ${diskChecks} disk images checked`,
    );
    expect(ops).toBeGreaterThanOrEqual(MIN_OPS);
    expect(invariantChecks).toBeGreaterThanOrEqual(ops);
    expect(diskChecks).toBeGreaterThan(RUNS);
  }, 600_000);
}
