/**
 * The README's examples are real: every `$ cat examples/...` shows the file as shipped, and every
 * `$ npx hmmlab replay|stress|generate|demo ...` command runs with the exit status shown (`# exit
 * status N`, else 0) and prints every line shown (a "..." line elides some; times, rates and other
 * decimals may differ; /tmp paths go to a fresh directory). `info` and `bench` are left out: their
 * output is the machine's.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { hmmlab, ourStderr } from '../helpers/cli.ts';

const ROOT = new URL('../../', import.meta.url);

interface Shown {
  command: string;
  output: string[];
}

/** Every `$ ` command of the README's code blocks with the lines shown under it. */
function shownCommands(readme: string): Shown[] {
  const out: Shown[] = [];
  let inBlock = false;
  let cur: Shown | null = null;
  for (const line of readme.split('\n')) {
    if (line.startsWith('```')) {
      inBlock = !inBlock;
      cur = null;
    } else if (inBlock && line.startsWith('$ ')) {
      cur = { command: line.slice(2), output: [] };
      out.push(cur);
    } else if (cur && line !== '') cur.output.push(line);
  }
  return out;
}

/** A shown line as a pattern: times, rates, decimals and column padding may differ from run to run. */
function linePattern(line: string): RegExp {
  const esc = line.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const loose = esc
    .replace(/\d+(?:\\\.\d+)+/g, '[\\d.]+')
    .replace(/\d+ ms/g, '\\d+ ms')
    .replace(/\d+ ops\/s/g, '\\d+ ops/s')
    .replace(/ {2,}/g, ' +'); // columns move with the widths of the numbers
  return new RegExp(`^${loose}$`);
}

let readme: string;
let tmp: string;
beforeAll(async () => {
  readme = await readFile(new URL('README.md', ROOT), 'utf8');
  tmp = await mkdtemp(join(tmpdir(), 'hmmlab-readme-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

test('every example log the README cats is the one in examples/', async () => {
  const cats = shownCommands(readme).filter((c) => /^cat examples\//.test(c.command));
  expect(cats.length).toBeGreaterThanOrEqual(4);
  for (const c of cats) {
    const text = await readFile(new URL(c.command.slice(4), ROOT), 'utf8');
    expect(c.output, c.command).toEqual(text.trimEnd().split('\n'));
  }
});

test('every replay, stress, generate and demo command of the README prints what it shows', async () => {
  const runs = shownCommands(readme).filter(
    (c) => /^npx hmmlab (replay|stress|generate|demo)\b/.test(c.command) && !/[|&>]/.test(c.command),
  );
  expect(runs.length).toBeGreaterThanOrEqual(8);
  await rm(join(tmp, 'lab'), { recursive: true, force: true });
  await import('node:fs/promises').then((f) => f.mkdir(join(tmp, 'lab')));
  for (const c of runs) {
    const args = c.command
      .replace(/^npx hmmlab /, '')
      .replaceAll('/tmp/', `${tmp}/`)
      .split(' ');
    const r = await hmmlab(args, { timeoutMs: 120_000 });
    const status = c.output.map((l) => /# exit status (\d)$/.exec(l)).find((m) => m);
    expect(r.code, `${c.command}\n${r.stderr}`).toBe(status ? Number(status[1]) : 0);
    const got = [...r.stdout.split('\n'), ...ourStderr(r.stderr)];
    for (const shown of c.output) {
      if (shown === '...' || /^\.\.\.|\.\.\.$/.test(shown)) continue;
      const line = shown.replace(/\s+# exit status \d$/, '').replaceAll('/tmp/', `${tmp}/`);
      const re = linePattern(line);
      expect(
        got.some((l) => re.test(l)),
        `${c.command}: no line like\n${line}\nin\n${got.join('\n')}`,
      ).toBe(true);
    }
  }
});
