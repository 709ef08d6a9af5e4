/**
 * A quick fsx-style check of the fs and mm paths together (the full property test lives in
 * test/oplog): seeded random ops against a plain byte-array model, under host budgets of 4 and 8
 * pages so that reclaim and writeback interleave with every path. The seed is printed on failure;
 * HMMLAB_SEED=<n> replays one.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { File } from '../../src/fs/hmmfs.ts';
import type { VmArea } from '../../src/mm/index.ts';
import { diskBytes, type Lab, mountLab, pattern } from './helpers.ts';

let lab: Lab | undefined;
afterEach(async () => {
  await lab?.cleanup();
  lab = undefined;
});

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Model {
  data = new Uint8Array(0);
  resize(n: number): void {
    const d = new Uint8Array(n);
    d.set(this.data.subarray(0, Math.min(n, this.data.length)));
    this.data = d;
  }
  write(off: number, b: Uint8Array): void {
    if (off + b.length > this.data.length) this.resize(off + b.length);
    this.data.set(b, off);
  }
  read(off: number, len: number): Uint8Array {
    return this.data.slice(Math.min(off, this.data.length), Math.min(off + len, this.data.length));
  }
}

function firstDiff(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return -2;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

async function run(seed: number, pageSize: number, hostPages: number, nops: number): Promise<string[]> {
  const rnd = mulberry32(seed);
  const int = (n: number) => Math.floor(rnd() * n);
  const maxSize = 12 * pageSize;
  lab = await mountLab({ pageSize, hostPages });
  let f: File = await lab.fs.open('f', { create: true });
  let vma: VmArea = f.mmap(maxSize);
  const model = new Model();
  const log: string[] = [];
  const check = (what: string, got: Uint8Array, want: Uint8Array) => {
    const d = firstDiff(got, want);
    if (d !== -1)
      throw new Error(
        `seed ${seed}: ${what} differs at ${d} (len ${got.length} vs ${want.length})\n${log.slice(-15).join('\n')}`,
      );
  };
  for (let i = 0; i < nops; i++) {
    const kind = int(12);
    const off = int(maxSize);
    const len = 1 + int(Math.min(3 * pageSize, maxSize - off));
    const a512 = (x: number) => Math.floor(x / 512) * 512;
    switch (kind) {
      case 0:
      case 1: {
        log.push(`write ${off} ${len} tag ${i}`);
        await f.write(off, pattern(off, len, i));
        model.write(off, pattern(off, len, i));
        break;
      }
      case 2:
      case 3: {
        log.push(`read ${off} ${len}`);
        check(log.at(-1)!, await f.read(off, len), model.read(off, len));
        break;
      }
      case 4: {
        log.push(`mapwrite ${off} ${len} tag ${i}`);
        if (off + len > f.size) {
          await f.truncate(off + len);
          model.resize(off + len);
        }
        await vma.store(off, pattern(off, len, i));
        model.write(off, pattern(off, len, i));
        break;
      }
      case 5: {
        log.push(`mapread ${off} ${len}`);
        check(log.at(-1)!, await vma.load(off, len), model.read(off, len));
        break;
      }
      case 6: {
        const size = int(maxSize);
        log.push(`truncate ${size}`);
        await f.truncate(size);
        model.resize(size);
        break;
      }
      case 7: {
        log.push(`punch ${off} ${len}`);
        await f.punchHole(off, len);
        const end = Math.min(off + len, model.data.length);
        if (end > off) model.data.fill(0, off, end);
        break;
      }
      case 8: {
        const o = a512(off);
        const l = Math.max(512, a512(len));
        if (rnd() < 0.5) {
          log.push(`dioread ${o} ${l}`);
          check(log.at(-1)!, await f.readDirect(o, l), model.read(o, l));
        } else if (o + l <= maxSize) {
          log.push(`diowrite ${o} ${l} tag ${i}`);
          await f.writeDirect(o, pattern(o, l, i));
          model.write(o, pattern(o, l, i));
        }
        break;
      }
      case 9: {
        log.push('fsync');
        await f.fsync();
        check('disk after fsync', diskBytes(lab.dir, 'f'), model.data);
        break;
      }
      case 10: {
        log.push('dropcaches');
        await lab.fs.dropCaches();
        break;
      }
      default: {
        log.push('remount');
        await lab.fs.remount();
        check('disk after remount', diskBytes(lab.dir, 'f'), model.data);
        f = await lab.fs.open('f');
        vma = f.mmap(maxSize);
        break;
      }
    }
    expect(f.size).toBe(model.data.length);
  }
  check('final read', await f.read(0, maxSize), model.data);
  return log;
}

const baseSeed = Number(process.env.HMMLAB_SEED ?? Date.now() % 1_000_000);

describe.each([
  [4096, 4],
  [4096, 8],
  [65536, 4],
])('random ops, page size %i, %i host pages', (pageSize, hostPages) => {
  it('every read matches the model, the disk matches after every fsync and remount', async () => {
    const seed = baseSeed + pageSize + hostPages;
    try {
      await run(seed, pageSize, hostPages, 1500);
    } catch (e) {
      console.error(`failing seed ${seed} (replay: HMMLAB_SEED=${baseSeed})`);
      throw e;
    }
  });
});
