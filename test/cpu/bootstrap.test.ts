/**
 * The worker bootstrap (src/cpu/worker.mjs) outside vitest: a plain `node` process that registers
 * tsx's ESM loader as bin/hmmlab.mjs does, starts two workers, and stores and loads through them.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

const SCRIPT = `
import { register } from 'tsx/esm/api';
register();
const { HmmFs } = await import('./src/fs/hmmfs.ts');
const { CpuThreads, HmmFsCpuOwner } = await import('./src/cpu/index.ts');
const fs = await HmmFs.mount({ hostPages: 16 });
const threads = await CpuThreads.start(new HmmFsCpuOwner(fs), { threads: 2 });
try {
  const [a, b] = threads.workers.map((w) => w.api);
  const fd = await a.open('f', true);
  await a.write(fd, 0, new Uint8Array(8192));
  const v = await a.mmap(fd);
  await a.store(v, 4090, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
  console.log(JSON.stringify({ bytes: [...(await b.load(v, 4090, 10))], faults: threads.stats().cpu_worker_faults }));
} finally {
  await threads.close();
  await fs.unmount();
}
`;

it('workers start from a plain node process that registers tsx as bin/hmmlab.mjs does', async () => {
  const out = await new Promise<string>((resolve, reject) => {
    execFile(
      process.execPath,
      ['--input-type=module', '-e', SCRIPT],
      { cwd: ROOT, timeout: 60_000 },
      (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)),
    );
  });
  // The store straddles pages 0 and 1 (two write faults); b's load finds both mapped.
  expect(JSON.parse(out)).toEqual({ bytes: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], faults: 2 });
});
