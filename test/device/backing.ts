/**
 * A test's stand-in for the mirror policy, as lib/test_hmm.c's dmirror backs a device with plain
 * host memory: each device address space is backed by a host byte array; a fault copies the page
 * into a frame and maps it (rw for a write fault); eviction copies dirty frames back. Pages in
 * `refuseWrite` are refused (EFAULT), as a page_mkwrite that says no.
 */
import { afterAll, afterEach, beforeAll } from 'vitest';
import {
  type DeviceFault,
  DeviceMemory,
  type DeviceMemoryOptions,
  type FaultResolution,
  type FaultServicer,
} from '../../src/device/index.ts';
import { GpuDevice } from '../../src/gpu/device.ts';

/**
 * A test file's device: the GPU opened once for the file, and `setup` for a fresh DeviceMemory
 * with a HostBacking, destroyed after each test.
 */
export function deviceRig(): (opts: DeviceMemoryOptions) => Promise<{ dm: DeviceMemory; hb: HostBacking }> {
  let gpu: GpuDevice;
  const made: DeviceMemory[] = [];
  beforeAll(async () => {
    gpu = await GpuDevice.open();
  });
  afterAll(() => gpu?.destroy());
  afterEach(() => {
    for (const dm of made.splice(0)) dm.destroy();
  });
  return async (opts) => {
    const dm = await DeviceMemory.create(gpu, opts);
    made.push(dm);
    return { dm, hb: new HostBacking(dm, opts.pageSize) };
  };
}

export class HostBacking {
  readonly data = new Map<number, Uint8Array>();
  readonly refuseWrite = new Set<number>();
  /** Faults the servicer saw, batch by batch. */
  readonly served: DeviceFault[][] = [];
  evicted = 0;
  evictedDirty = 0;

  constructor(
    readonly dm: DeviceMemory,
    readonly pageSize: number,
  ) {
    dm.setEvictionHook(async (victims) => {
      this.evicted += victims.length;
      const dirty = victims.filter((v) => v.dirty);
      this.evictedDirty += dirty.length;
      const pages = await dm.copyFromFrames(dirty.map((v) => v.frame));
      dirty.forEach((v, i) => {
        this.bytes(v.space).set(pages[i], v.index * pageSize);
      });
      return undefined;
    });
  }

  /** The backing bytes of a space (grown on demand, zero-filled). */
  bytes(space: number, size = 0): Uint8Array {
    let b = this.data.get(space);
    if (!b || b.byteLength < size) {
      const n = new Uint8Array(Math.max(size, 2 * (b?.byteLength ?? 0))); // geometric growth
      if (b) n.set(b);
      this.data.set(space, n);
      b = n;
    }
    return b;
  }

  page(space: number, index: number): Uint8Array {
    const b = this.bytes(space, (index + 1) * this.pageSize);
    return b.subarray(index * this.pageSize, (index + 1) * this.pageSize);
  }

  readonly servicer: FaultServicer = async (faults, ctx) => {
    this.served.push(faults);
    const spaceId = ctx.space.id;
    const fresh = faults.filter((f) => !ctx.lookup(f.index) && !(f.write && this.refuseWrite.has(f.index)));
    const frames = await ctx.allocFrames(fresh.map((f) => f.index));
    const frameOf = new Map(fresh.map((f, i) => [f.index, frames[i]]));
    const copies = fresh
      .filter((f) => frameOf.get(f.index) != null)
      .map((f) => ({ frame: frameOf.get(f.index)!, data: this.page(spaceId, f.index) }));
    await ctx.copyToFrames(copies);
    return faults.map((f): FaultResolution => {
      if (f.write && this.refuseWrite.has(f.index)) {
        return { ok: false, code: 'EFAULT', message: `page_mkwrite refused page ${f.index}` };
      }
      const frame = ctx.lookup(f.index)?.frame ?? frameOf.get(f.index);
      if (frame == null) return { ok: false, retry: true };
      return { ok: true, frame, perm: f.write ? 'rw' : 'ro' };
    });
  };

  /** Copy every device-held page of a space back (as a writeback would), without unmapping. */
  async syncBack(space: number): Promise<void> {
    const t = this.dm.space(space);
    const entries = [...t.entries];
    const pages = await this.dm.copyFromFrames(entries.map(([, e]) => e.frame));
    entries.forEach(([index], i) => {
      this.bytes(space, (index + 1) * this.pageSize).set(pages[i], index * this.pageSize);
    });
  }
}
