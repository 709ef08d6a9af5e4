/**
 * The demo's story chapters (src/cli/demo.ts, what `npm start` runs) on the real adapter: each
 * chapter compares the data it shows with the expected pattern and says "checked: OK" only then,
 * and every sentence follows the run's numbers (the narration functions are also fed other numbers
 * here: a step that did nothing says so). --chapter runs the named chapters once each, in order.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  cpuReadSentences,
  readFaultSentence,
  readpageSentence,
  reclaimSentence,
  runDemo,
  selectChapters,
  storyChapters,
  writeFaultSentence,
} from '../../src/cli/demo.ts';
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
  // The CPU mapping was writable, so the read fault write-protected it, and says how much.
  const mapped = /(\d+) of 16 CPU PTEs writable now/.exec(out);
  const wp =
    /Kara's read fault: write-protected (\d+) writable CPU PTEs \(page_mkclean\), copied (\d+) pages A -> A' \((\d+) KiB\)/.exec(
      out,
    );
  expect(mapped && wp, out).toBeTruthy();
  expect(wp![1]).toBe(mapped![1]);
  expect(Number(wp![3])).toBe(Number(wp![2]) * 4);
  expect(out).toMatch(/A stays in the page cache: 16 pages with A D, CPU ro, device ro\./);
  // A raw fault is explained where the counts first appear.
  expect(out).toMatch(/raw: one per faulting 4-byte access/);
  // The numbers of one sentence agree with the table under it.
  const half = /read\(2\) of the first half: (\d+) pages copied back \((\d+) KiB\)/.exec(out);
  expect(Number(half![2])).toBe(Number(half![1]) * 4);
});

it('a chapter run alone runs the story before it silently', async () => {
  let out = '';
  const fsync = storyChapters.find((c) => c.name === 'fsync')!;
  expect(await runDemo({ gpu, print: (t) => (out += t) }, [fsync])).toBe(0);
  expect(out).not.toMatch(/16,384 device threads/);
  expect(out).toMatch(/disk checked against the expected pattern: OK/);
});

it('--chapter runs each named chapter once, in the story order', () => {
  expect(selectChapters('fsync, devread,fsync,adapter').map((c) => c.name)).toEqual([
    'adapter',
    'devread',
    'fsync',
  ]);
  expect(() => selectChapters('nope')).toThrow(/unknown demo chapter "nope": expected one of adapter, copy/);
});

describe('the sentences follow the numbers', () => {
  it('a read fault with no writable CPU PTE and nothing to copy says so', () => {
    const s = readFaultSentence({
      cpuWriteProtected: 0,
      pagesCopied: 0,
      bytesCopied: 0,
      states: '2 pages with A C',
    });
    expect(s).toMatch(/no CPU PTE was writable, so none to write-protect, copied nothing/);
    expect(s).not.toMatch(/write-protected/);
    const one = readFaultSentence({ cpuWriteProtected: 1, pagesCopied: 1, bytesCopied: 4096, states: 'x' });
    expect(one).toMatch(
      /write-protected 1 writable CPU PTE \(page_mkclean\), copied 1 page A -> A' \(4 KiB\)/,
    );
  });

  it('a write fault says whether it copied', () => {
    expect(writeFaultSentence({ mkwrites: 1, cpuUnmapped: 0, bytesCopied: 0 })).toMatch(
      /page_mkwrite for 1 page, 0 CPU PTEs cleared; no copy/,
    );
    expect(writeFaultSentence({ mkwrites: 2, cpuUnmapped: 2, bytesCopied: 8192 })).toMatch(
      /8 KiB copied A -> A' first/,
    );
  });

  it('CPU reads say "each page once" and "stays on the device" only when it is so', () => {
    const f = {
      firstHalfCopied: 8,
      firstHalfBytes: 32768,
      firstHalfProtects: 8,
      laterCopied: 8,
      bytesInAll: 65536,
      pages: 16,
    };
    expect(cpuReadSentences({ ...f, stillOnDevice: 8 })).toMatch(
      /8 pages of the other half still rw on the device.*each page once/s,
    );
    const twice = cpuReadSentences({ ...f, stillOnDevice: 0, laterCopied: 12 });
    expect(twice).toMatch(/nothing left rw on the device/);
    expect(twice).not.toMatch(/each page once/);
  });

  it('reclaim and readpage say where the data lives from the counts', () => {
    expect(reclaimSentence({ reclaimed: 10, deviceEntries: 0, entriesNow: 0, pages: 16 })).toMatch(
      /0 pages of thread\.dat left a device entry \(0 of 16 are E now\): every page of it is still in host memory/,
    );
    expect(readpageSentence({ entries: 0, pulledBytes: 0, diskKiB: 64 })).toMatch(
      /found 0 device entries and pulled 0 KiB from the device; 64 KiB read from disk\.$/m,
    );
  });
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

it('the concurrent chapter runs CPU workers beside the kernels under each policy, and checks it all', async () => {
  let out = '';
  const { concurrentChapter } = await import('../../src/cli/demo.ts');
  expect(await runDemo({ gpu, print: (t) => (out += t) }, [concurrentChapter])).toBe(0);
  for (const p of ['mirror', 'migrate']) {
    const line = out.split('\n').find((l) => l.startsWith(`${p}: `));
    expect(line, `${p} line`).toBeDefined();
    // Each side really ran, at the same time, and the checks said OK.
    const num = (re: RegExp) => Number(line!.match(re)![1].replace(/,/g, ''));
    expect(num(/([\d,]+) device and/)).toBeGreaterThan(0);
    expect(num(/([\d,]+) CPU increments/)).toBeGreaterThan(0);
    expect(num(/([\d,]+) CPU accesses while a kernel was in flight/)).toBeGreaterThan(0);
    expect(line).toMatch(/the file on disk after a remount: checked: OK\.$/);
  }
});
