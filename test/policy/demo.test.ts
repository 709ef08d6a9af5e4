/**
 * The demo's story chapters (src/cli/demo.ts, what `npm start` runs) on the real adapter: each
 * chapter compares the data it shows with the expected pattern and says "checked: OK" only then.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runDemo, storyChapters } from '../../src/cli/demo.ts';
import type { GpuDevice } from '../../src/gpu/device.ts';
import { openGpu } from './helpers.ts';

let gpu: GpuDevice;
beforeAll(async () => {
  gpu = await openGpu();
});
afterAll(() => {
  if (!gpu.lost) gpu.destroy();
});

it('the story of the 2016 thread runs every chapter, and every check says OK', async () => {
  let out = '';
  const failed = await runDemo({ gpu, print: (t) => (out += t) }, storyChapters);
  expect(failed, out).toBe(0);
  expect(out).not.toMatch(/!!/);
  expect(out.match(/checked against the expected pattern: OK/g)?.length).toBe(6);
  expect(out).toMatch(/16,384 raw -> 16 unique/);
  expect(out).toMatch(/0\s+E\s+-\s+-\s+rw/); // a device entry after reclaim
  expect(out).toMatch(/disk checked against the expected pattern: OK/);
});

it('a chapter run alone runs the story before it silently', async () => {
  let out = '';
  const fsync = storyChapters.find((c) => c.name === 'fsync')!;
  expect(await runDemo({ gpu, print: (t) => (out += t) }, [fsync])).toBe(0);
  expect(out).not.toMatch(/16,384 device threads/);
  expect(out).toMatch(/disk checked against the expected pattern: OK/);
});

it('the comparison chapter runs the same workloads under mirror, migrate and explicit', async () => {
  let out = '';
  const { compareChapter } = await import('../../src/cli/compare.ts');
  expect(await runDemo({ gpu, print: (t) => (out += t) }, [compareChapter])).toBe(0);
  expect(out).toMatch(/every run's data checked against what it wrote: OK/);
  for (const p of ['mirror', 'migrate', 'explicit'])
    expect(out).toMatch(new RegExp(`^glisse-dataset +${p} `, 'm'));
  expect(out).toMatch(/migrate holds none of the dataset on the host/);
});
