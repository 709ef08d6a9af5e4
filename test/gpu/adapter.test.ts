/**
 * Adapter choice on the real machine: the default adapter opens and describes itself; an adapter
 * can be chosen by a substring of its name (option or HMMLAB_ADAPTER); a name that matches nothing
 * is an ENODEV error that names it; requests over the adapter's limits are ELIMIT errors.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { HmmlabError } from '../../src/errors.ts';
import { availableAdapters } from '../../src/gpu/adapter.ts';
import { createDeviceBuffer } from '../../src/gpu/copy.ts';
import { GpuDevice } from '../../src/gpu/device.ts';
import { rejection } from '../helpers/rejection.ts';

const opened: GpuDevice[] = [];
async function open(options: Parameters<typeof GpuDevice.open>[0] = {}): Promise<GpuDevice> {
  const gpu = await GpuDevice.open(options);
  opened.push(gpu);
  return gpu;
}
afterEach(() => {
  for (const gpu of opened.splice(0)) gpu.destroy();
});

/** The adapter's name as Dawn matches it: description on Vulkan ("llvmpipe: Mesa ..."), first word. */
function nameWord(gpu: GpuDevice): string {
  return (gpu.info.description || gpu.info.device).split(/[\s:(]/)[0];
}

describe('adapter choice', () => {
  it('opens the default adapter and reports non-empty info', async () => {
    const gpu = await open();
    expect(gpu.info.vendor).not.toBe('');
    expect(gpu.info.backend).not.toBe('');
    expect(gpu.info.description || gpu.info.device).not.toBe('');
    expect(gpu.limits.maxBufferSize).toBeGreaterThanOrEqual(256 << 20);
    expect(gpu.instance).toBeDefined();
  });

  it('marks lavapipe as a software adapter', async () => {
    const gpu = await open();
    const isLavapipe = /llvmpipe|lavapipe/i.test(`${gpu.info.description} ${gpu.info.device}`);
    if (isLavapipe) expect(gpu.info.software).toBe(true);
    else expect(typeof gpu.info.software).toBe('boolean');
  });

  it('raises maxBufferSize to what the adapter allows', async () => {
    const gpu = await open();
    const adapterMax = (gpu.adapter.limits as unknown as Record<string, number>).maxBufferSize;
    expect(gpu.limits.maxBufferSize).toBe(adapterMax);
  });

  it('selects an adapter by a substring of its name (option)', async () => {
    const first = await open();
    const word = nameWord(first);
    const chosen = await open({ adapter: word.slice(0, Math.max(3, word.length - 1)) });
    expect(chosen.info.description).toBe(first.info.description);
  });

  it('selects an adapter by a substring of its name (HMMLAB_ADAPTER)', async () => {
    const first = await open();
    const saved = process.env.HMMLAB_ADAPTER;
    process.env.HMMLAB_ADAPTER = nameWord(first);
    try {
      const chosen = await open();
      expect(chosen.info.device).toBe(first.info.device);
    } finally {
      if (saved === undefined) delete process.env.HMMLAB_ADAPTER;
      else process.env.HMMLAB_ADAPTER = saved;
    }
  });

  it('a named adapter that does not exist is ENODEV naming it', async () => {
    const e = await rejection(GpuDevice.open({ adapter: 'no-such-gpu-xyz' }));
    expect(e.code).toBe('ENODEV');
    expect(e.message).toContain('"no-such-gpu-xyz"');
    expect(e.message).not.toContain('\n');
  });

  it('lists the adapters Dawn offers in one line', () => {
    const dawn = "Available adapters:\n * backend: 'vulkan', name: 'llvmpipe (LLVM 15.0.6, 256 bits)'\n";
    expect(availableAdapters(dawn)).toEqual(['llvmpipe (LLVM 15.0.6, 256 bits) [vulkan]']);
  });
});

describe('limits', () => {
  it('requiredLimits above the adapter maximum is ELIMIT', async () => {
    const gpu = await open();
    const max = (gpu.adapter.limits as unknown as Record<string, number>).maxComputeWorkgroupSizeX;
    const e = await rejection(GpuDevice.open({ requiredLimits: { maxComputeWorkgroupSizeX: max + 1 } }));
    expect(e.code).toBe('ELIMIT');
    expect(e.message).toContain('maxComputeWorkgroupSizeX');
    expect(e.message).toContain(String(max));
  });

  it('an unknown limit name is ELIMIT', async () => {
    const e = await rejection(GpuDevice.open({ requiredLimits: { maxWidgets: 1 } }));
    expect(e.code).toBe('ELIMIT');
    expect(e.message).toContain('maxWidgets');
  });

  it('a buffer over maxBufferSize is ELIMIT, and the device stays usable', async () => {
    // A limit asked for below the default is raised to the default, so use the device's own limit.
    const gpu = await open();
    const max = gpu.limits.maxBufferSize;
    let err: unknown;
    try {
      createDeviceBuffer(gpu, 'too-big', max + 1);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(HmmlabError);
    expect((err as HmmlabError).code).toBe('ELIMIT');
    expect((err as HmmlabError).message).toContain('maxBufferSize');
    const ok = createDeviceBuffer(gpu, 'fits', 1 << 20);
    await gpu.scoped('use after ELIMIT', () => gpu.drain());
    ok.destroy();
  });
});
