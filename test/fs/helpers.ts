/** Shared set-up for the fs and mm tests: a mount over a fresh temp dir, the op-log byte pattern. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HmmFs, type MountOptions } from '../../src/fs/hmmfs.ts';
import { patternBytes } from '../../src/oplog/pattern.ts';

export interface Lab {
  fs: HmmFs;
  dir: string;
  /** Unmount (if still mounted) and remove the directory. */
  cleanup(): Promise<void>;
}

export async function mountLab(opts: Omit<MountOptions, 'dir'> = {}): Promise<Lab> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hmmlab-test-'));
  const hfs = await HmmFs.mount({ ...opts, dir });
  return {
    fs: hfs,
    dir,
    async cleanup() {
      await hfs.unmount();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** docs/oplog.md's data (byte(x) = (x + 7 * tag) mod 251): the one implementation, checked in test/oplog/pattern.test.ts. */
export { patternBytes as pattern };

/** The backing file's bytes, read straight from disk. */
export function diskBytes(dir: string, name: string): Uint8Array {
  return new Uint8Array(fs.readFileSync(path.join(dir, name)));
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
