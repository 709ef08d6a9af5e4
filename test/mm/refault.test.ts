/**
 * workingset_refault_file counts a refault only of a page that reclaim evicted (it left a shadow
 * entry); drop_caches, as Linux's invalidate_mapping_pages, leaves no shadow entries and clears
 * those of earlier reclaim.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, test } from 'vitest';
import { HmmFs } from '../../src/fs/hmmfs.ts';
import { patternBytes } from '../../src/oplog/pattern.ts';

const PS = 4096;
let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hmmlab-refault-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

test('a page read again after drop_caches is not a refault', async () => {
  const fs = await HmmFs.mount({ dir, hostPages: 64 });
  const f = await fs.open('a', { create: true });
  await f.write(0, patternBytes(0, 8 * PS, 1));
  await f.fsync();
  expect(await fs.dropCaches()).toBe(8);
  await f.read(0, 8 * PS);
  expect(fs.vmstat().workingset_refault_file).toBe(0);
  await fs.unmount();
});

test('a page that reclaim evicted is a refault when read again, until drop_caches forgets it', async () => {
  const fs = await HmmFs.mount({ dir, hostPages: 4 });
  const f = await fs.open('a', { create: true });
  await f.write(0, patternBytes(0, 16 * PS, 1)); // 16 pages through 4: reclaim evicts
  await f.fsync();
  const evicted = fs.vmstat().pgsteal_direct;
  expect(evicted).toBeGreaterThan(0);
  await f.read(0, PS); // page 0 was among the first evicted
  const refaults = fs.vmstat().workingset_refault_file;
  expect(refaults).toBeGreaterThan(0);
  await fs.dropCaches(); // clears the shadow entries of the pages still evicted
  await f.read(PS, PS);
  expect(fs.vmstat().workingset_refault_file).toBe(refaults);
  await fs.unmount();
});
