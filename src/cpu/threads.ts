/**
 * CpuThreads: the owner's side of the CPU worker threads. It starts M workers (worker.mjs), gives
 * each its CPU number, the per-CPU words (the access sequences) and a port on which it serves the
 * owner's API (syscalls, mmap, CPU faults) through comlink; each worker's own API (its loads,
 * stores and syscalls, protocol.ts) is a comlink proxy here. The owner thread has a CPU of its own
 * (`self`, the last slot) so it can load and store through the same mappings under the same
 * protocol. `cpu_tlb_shootdown` (tlb.ts) waits for the workers after a PTE change.
 *
 * A worker that dies (an uncaught error, an exit) fails every call still waiting on it, instead of
 * leaving it pending for ever. close() terminates every worker: a test that started them must call
 * it, or its threads outlive it.
 */
import { MessageChannel, type MessagePort, Worker } from 'node:worker_threads';
import { HmmlabError } from '../errors.ts';
import { CpuMm } from './access.ts';
import { Comlink, endpoint } from './comlink.ts';
import { type CpuOwnerApi, type CpuWorkerApi, type CpuWorkerInit, forwardSyscalls } from './protocol.ts';
import { CpuTlb, type CpuTlbStats, type PteChange } from './tlb.ts';

const WORKER_URL = new URL('./worker.mjs', import.meta.url);

/** An owner that tells its page cache whose TLB to shoot down (HmmFsCpuOwner). */
interface TlbAttach {
  attachTlb(tlb: CpuTlb | null): void;
}

export interface CpuThreadsOptions {
  /** Worker threads to start (M). */
  threads: number;
  /** How long a shootdown waits for a worker to leave its access (default 5000 ms). */
  shootdownTimeoutMs?: number;
  /** How long a worker may take to start (load tsx and its modules; default 30 s). */
  startTimeoutMs?: number;
}

export interface CpuWorker {
  /** CPU number: the worker's slot in the sequence words. */
  readonly cpu: number;
  /** worker_threads threadId. */
  readonly threadId: number;
  /** The worker's API; every call fails (ECHILD-like EIO) if the worker dies first. */
  readonly api: Comlink.Remote<CpuWorkerApi>;
  /** CPU faults this worker sent to the owner. */
  readonly faults: number;
}

export interface CpuThreadsStats extends CpuTlbStats {
  /** CPU faults the workers sent to the owner. */
  cpu_worker_faults: number;
}

class WorkerThread implements CpuWorker {
  faults = 0;
  threadId = -1;
  api!: Comlink.Remote<CpuWorkerApi>;
  death: Error | null = null;
  private readonly onDeath = new Set<(e: Error) => void>();

  constructor(
    readonly cpu: number,
    readonly worker: Worker,
    readonly ownerPort: MessagePort,
  ) {
    const die = (e: Error) => {
      this.death ??= e;
      for (const f of this.onDeath) f(this.death);
      this.onDeath.clear();
    };
    worker.on('error', (e) =>
      die(new HmmlabError('EIO', `cpu worker ${cpu} died: ${e.message}`, { cause: e })),
    );
    worker.on('exit', (code) => die(new HmmlabError('EIO', `cpu worker ${cpu} exited (code ${code})`)));
  }

  /** `p`, or the worker's death if that comes first. */
  guard<T>(p: Promise<T>): Promise<T> {
    if (this.death) return Promise.reject(this.death);
    return new Promise<T>((resolve, reject) => {
      this.onDeath.add(reject);
      p.then(resolve, reject).finally(() => this.onDeath.delete(reject));
    });
  }
}

/** Wrap a comlink remote so every method call also fails when the worker dies. */
function guarded(t: WorkerThread, remote: Comlink.Remote<CpuWorkerApi>): Comlink.Remote<CpuWorkerApi> {
  return new Proxy(remote, {
    get(target, key) {
      const method = Reflect.get(target, key) as (...a: unknown[]) => Promise<unknown>;
      return (...args: unknown[]) => t.guard(method(...args));
    },
  });
}

export class CpuThreads {
  readonly tlb: CpuTlb;
  /** The owner thread's own CPU (the last slot): loads and stores through the same protocol. */
  readonly self: CpuMm;
  private readonly threads: WorkerThread[] = [];
  private closed = false;

  private constructor(
    readonly owner: CpuOwnerApi,
    readonly nrWorkers: number,
    shootdownTimeoutMs: number,
  ) {
    this.tlb = new CpuTlb(nrWorkers + 1, shootdownTimeoutMs, (cpu) => this.cpuName(cpu));
    this.self = new CpuMm(this.tlb.seq, nrWorkers, owner);
  }

  /** Start `threads` workers serving `owner`'s API; resolves when every one answered. */
  static async start(owner: CpuOwnerApi, o: CpuThreadsOptions): Promise<CpuThreads> {
    if (!Number.isSafeInteger(o.threads) || o.threads < 1) {
      throw new HmmlabError('EINVAL', `cpu threads must be a positive integer, got ${o.threads}`);
    }
    const t = new CpuThreads(owner, o.threads, o.shootdownTimeoutMs ?? 5000);
    try {
      for (let cpu = 0; cpu < o.threads; cpu++) t.threads.push(t.spawn(cpu));
      const startTimeout = o.startTimeoutMs ?? 30_000;
      await Promise.all(t.threads.map((w) => t.hello(w, startTimeout)));
      // From now on every PTE change the page cache makes waits for these threads' shootdown.
      (owner as Partial<TlbAttach>).attachTlb?.(t.tlb);
    } catch (e) {
      await t.close();
      throw e;
    }
    return t;
  }

  private spawn(cpu: number): WorkerThread {
    const { port1, port2 } = new MessageChannel();
    const init: CpuWorkerInit = { cpu, seq: this.tlb.seq.buffer as SharedArrayBuffer, port: port2 };
    // No inherited execArgv: the parent's may hold flags a worker refuses (--input-type of
    // `node -e`), and worker.mjs registers the one loader it needs itself.
    const worker = new Worker(WORKER_URL, { workerData: init, transferList: [port2], execArgv: [] });
    const w = new WorkerThread(cpu, worker, port1);
    // Serve the owner's API to this worker, counting its CPU faults.
    const owner = this.owner;
    const served: CpuOwnerApi = {
      ...forwardSyscalls(owner),
      mmap: (fd, length) => owner.mmap(fd, length),
      munmap: (vmaId) => owner.munmap(vmaId),
      vma: (vmaId) => owner.vma(vmaId),
      fault: (vmaId, index, write) => {
        w.faults++;
        return owner.fault(vmaId, index, write);
      },
    };
    Comlink.expose(served, endpoint(port1));
    w.api = guarded(w, Comlink.wrap<CpuWorkerApi>(endpoint(worker)));
    return w;
  }

  private async hello(w: WorkerThread, timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(new HmmlabError('ETIMEDOUT', `cpu worker ${w.cpu} did not start within ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    try {
      w.threadId = await Promise.race([w.api.hello(), late]);
    } finally {
      clearTimeout(timer);
    }
  }

  get workers(): readonly CpuWorker[] {
    return this.threads;
  }

  worker(cpu: number): CpuWorker {
    const w = this.threads[cpu];
    if (!w) throw new HmmlabError('EINVAL', `no cpu worker ${cpu} (there are ${this.threads.length})`);
    return w;
  }

  /** See CpuTlb.cpu_tlb_shootdown. */
  cpu_tlb_shootdown(changed?: Iterable<PteChange>, timeoutMs?: number): Promise<void> {
    return this.tlb.cpu_tlb_shootdown(changed, timeoutMs);
  }

  stats(): CpuThreadsStats {
    let faults = 0;
    for (const w of this.threads) faults += w.faults;
    return { ...this.tlb.stats(), cpu_worker_faults: faults };
  }

  /** Terminate every worker (idempotent). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    (this.owner as Partial<TlbAttach>).attachTlb?.(null);
    await Promise.all(
      this.threads.map(async (w) => {
        w.ownerPort.close();
        await w.worker.terminate();
      }),
    );
  }

  private cpuName(cpu: number): string {
    if (cpu === this.nrWorkers) return `the owner thread (cpu ${cpu})`;
    const w = this.threads[cpu];
    return `cpu worker ${cpu} (thread ${w?.threadId ?? '?'})`;
  }
}
