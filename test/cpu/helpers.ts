/** Set-up for the CPU-thread tests: a host-only mount over a real dir, its owner API, M real workers. */

import type { Comlink } from '../../src/cpu/comlink.ts';
import { HmmFsCpuOwner } from '../../src/cpu/hmmfsOwner.ts';
import type { CpuWorkerApi } from '../../src/cpu/protocol.ts';
import { CpuThreads } from '../../src/cpu/threads.ts';
import type { File } from '../../src/fs/hmmfs.ts';
import type { VmArea } from '../../src/mm/memory.ts';
import type { Page } from '../../src/mm/types.ts';
import { type Lab, mountLab } from '../fs/helpers.ts';

export interface CpuLab {
  lab: Lab;
  owner: HmmFsCpuOwner;
  threads: CpuThreads;
  /** Terminate the workers, unmount, remove the dir. */
  cleanup(): Promise<void>;
}

export async function startCpuLab(
  workers: number,
  hostPages = 64,
  shootdownTimeoutMs = 5000,
): Promise<CpuLab> {
  const lab = await mountLab({ hostPages });
  const owner = new HmmFsCpuOwner(lab.fs);
  const threads = await CpuThreads.start(owner, { threads: workers, shootdownTimeoutMs }).catch(async (e) => {
    await lab.cleanup();
    throw e;
  });
  return {
    lab,
    owner,
    threads,
    async cleanup() {
      await threads.close();
      await lab.cleanup();
    },
  };
}

/** The one VmArea of `f` (the test's workers made it). */
export function onlyVma(f: File): VmArea {
  const vmas = [...f.mapping.i_mmap];
  if (vmas.length !== 1) throw new Error(`${f.name} has ${vmas.length} mappings, expected 1`);
  return vmas[0];
}

/** The cached page at `index` of `f`. */
export function cachedPage(f: File, index: number): Page {
  const e = f.mapping.i_pages.get(index);
  if (e?.kind !== 'page') throw new Error(`page ${index} of ${f.name} is not cached`);
  return e;
}

/** Let the owner's event loop turn `n` times (what a blocked owner could not do). */
export async function turns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise<void>((r) => setImmediate(r));
}

/** A promise and whether it has settled yet. */
export function track<T>(p: Promise<T>): { promise: Promise<T>; settled: () => boolean } {
  let done = false;
  const promise = p.finally(() => {
    done = true;
  });
  return { promise, settled: () => done };
}

/** Worker `w` creates file `name` holding `bytes` (write(2)) and maps it: the fd and the mapping id. */
export async function createMapped(
  w: Comlink.Remote<CpuWorkerApi>,
  name: string,
  bytes: Uint8Array,
  length?: number,
): Promise<{ fd: number; v: number }> {
  const fd = await w.open(name, true);
  await w.write(fd, 0, bytes);
  return { fd, v: await w.mmap(fd, length) };
}
