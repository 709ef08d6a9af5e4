/**
 * A CPU worker thread: a user thread of the owner's process. Its syscalls and CPU faults are RPCs
 * to the owner (comlink over the port in workerData); its loads and stores run here, on the host
 * pool's shared bytes, under the access protocol of access.ts. Started by CpuThreads (threads.ts)
 * through worker.mjs.
 */
import { parentPort, threadId, workerData } from 'node:worker_threads';
import { CpuMm } from './access.ts';
import { Comlink, endpoint } from './comlink.ts';
import { type CpuOwnerApi, type CpuWorkerApi, type CpuWorkerInit, forwardSyscalls } from './protocol.ts';
import { runWorkerStress } from './stressLoop.ts';
import { watchRanges } from './watch.ts';

const init = workerData as CpuWorkerInit;
const owner = Comlink.wrap<CpuOwnerApi>(endpoint(init.port));
const mm = new CpuMm(new Int32Array(init.seq), init.cpu, owner);

const api: CpuWorkerApi = {
  hello: () => threadId,
  ...forwardSyscalls(owner),
  async mmap(fd, length) {
    const desc = await owner.mmap(fd, length);
    mm.attach(desc);
    return desc.id;
  },
  async munmap(vmaId) {
    mm.detach(vmaId);
    await owner.munmap(vmaId);
  },
  async load(vmaId, off, len) {
    const bytes = await mm.load(vmaId, off, len);
    return Comlink.transfer(bytes, [bytes.buffer]);
  },
  store: (vmaId, off, bytes) => mm.store(vmaId, off, bytes),
  atomicAdd: (vmaId, off, delta, times) => mm.atomicAdd(vmaId, off, delta, times),
  armStall: (vmaId, index, ctl) => mm.armStall(vmaId, index, ctl),
  stats: () => mm.stats(),
  watch: (vmaId, ranges, ctl) => watchRanges(mm, vmaId, ranges, ctl),
  async concurrentStress(o) {
    const r = await runWorkerStress(mm, owner, o);
    return Comlink.transfer(r, [r.perWord.buffer]);
  },
};

Comlink.expose(api, endpoint(parentPort!));
