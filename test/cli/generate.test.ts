/**
 * `hmmlab generate`: a seeded log written without running it, the workload that `hmmlab stress`
 * runs with the same seed and switches; the fsx-style switches leave their kinds of op out.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { opMixOf } from '../../src/cli/workload.ts';
import { generateOplog } from '../../src/oplog/generate.ts';
import { parseOplog } from '../../src/oplog/parse.ts';
import { OP_NAMES, serializeOplog } from '../../src/oplog/schema.ts';
import { stressOplog } from '../../src/oplog/stress.ts';
import { hmmlab, ourStderr } from '../helpers/cli.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hmmlab-generate-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const kinds = (text: string) => new Set(parseOplog(text).ops.map((op) => op.op));

describe.concurrent('hmmlab generate', () => {
  test('the same seed gives the log stress runs; every kind of op by default', async () => {
    const r = await hmmlab(['generate', '--seed', '11', '--ops', '600']);
    expect(r.code, r.stderr).toBe(0);
    expect(ourStderr(r.stderr)).toEqual([]); // the seed was given: nothing to say
    const want = stressOplog({ ops: 600, device: true, pageSize: 4096, maxFileSize: 32 * 4096 }, 11);
    expect(r.stdout).toBe(serializeOplog(want));
    expect(kinds(r.stdout)).toEqual(new Set(OP_NAMES));
  });

  test('each switch leaves out its kinds of op and nothing else; the CLI takes them together', async () => {
    const cases: [string, string[]][] = [
      ['mapread', ['mapread']],
      ['mapwrite', ['mapwrite']],
      ['dio', ['dioread', 'diowrite']],
      ['punch', ['punch']],
      ['truncate', ['truncate']],
    ];
    for (const [name, gone] of cases) {
      const { weights } = opMixOf({ [name]: false }); // what commander gives for --no-NAME
      const log = generateOplog({ seed: 12, ops: 800, device: true, weights });
      expect(new Set(log.map((op) => op.op)), name).toEqual(
        new Set(OP_NAMES.filter((n) => !gone.includes(n))),
      );
    }
    const r = await hmmlab([
      'generate',
      '--seed',
      '12',
      '--ops',
      '800',
      '--no-mapread',
      '--no-dio',
      '--no-device',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const gone = ['mapread', 'dioread', 'diowrite', 'devread', 'devwrite'];
    expect(kinds(r.stdout)).toEqual(new Set(OP_NAMES.filter((n) => !gone.includes(n))));
  });

  test('--out writes the file; stress with the same switches saves the same log', async () => {
    const out = join(dir, 'w.jsonl');
    const saved = join(dir, 'stress.jsonl');
    const workload = '--seed 13 --ops 150 --max-file-size 64K --no-dio --no-punch'.split(' ');
    const g = await hmmlab(['generate', ...workload, '--no-device', '--out', out]);
    expect(g.code, g.stderr).toBe(0);
    expect(g.stdout).toBe('');
    const s = await hmmlab(['stress', '--policy', 'none', ...workload, '--save-ops', saved]);
    expect(s.code, s.stderr).toBe(0);
    expect(s.stdout).toMatch(/max file size 64 KiB, without dio, punch$/m);
    expect(await readFile(saved, 'utf8')).toBe(await readFile(out, 'utf8'));
  });

  test('no --seed: a random one, said on stderr', async () => {
    const r = await hmmlab(['generate', '--ops', '3']);
    expect(r.code).toBe(0);
    const m = /^generate: seed (\d+) \(--seed \d+ repeats it\)$/.exec(ourStderr(r.stderr)[0]);
    expect(m).not.toBeNull();
    const again = await hmmlab(['generate', '--ops', '3', '--seed', m![1]]);
    expect(again.stdout).toBe(r.stdout);
  });

  test('bad values are EINVAL, exit 2', async () => {
    const r = await hmmlab(['generate', '--seed', 'x']);
    expect(r.code).toBe(2);
    expect(ourStderr(r.stderr)).toEqual(['hmmlab: EINVAL: bad --seed "x": expected a non-negative integer']);
  });
});
