/**
 * Every copy path moves random data exactly: host -> device (writeBuffer, staging ring, one-off
 * staging), device -> device, device -> host (readback ring, one-off read), at sizes with unaligned
 * tails, from plain and SharedArrayBuffer sources, at offsets inside a buffer whose other bytes
 * must stay as they were. Seed: HMMLAB_SEED (printed).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fillRandom, firstDifference, newSeed } from '../../src/bench/random.ts';
import { HmmlabError } from '../../src/errors.ts';
import {
  copyDevice,
  copyHost,
  createDeviceBuffer,
  deviceSpan,
  ReadbackRing,
  readDevice,
  StagingRing,
  writeDevice,
  writeDeviceStaged,
} from '../../src/gpu/copy.ts';
import { GpuDevice } from '../../src/gpu/device.ts';

const SEED = process.env.HMMLAB_SEED ? Number(process.env.HMMLAB_SEED) : newSeed();
console.log(`copy.test.ts seed: HMMLAB_SEED=${SEED}`);

const SIZES = [1, 3, 4, 5, 4097, 65536, (1 << 20) + 5];
/** Where in the buffer the range goes: the start, and an aligned offset with bytes before it. */
const OFFSET = 8;
const GUARD = 0xa5;

let gpu: GpuDevice;
let staging: StagingRing;
let readback: ReadbackRing;
beforeAll(async () => {
  gpu = await GpuDevice.open();
  // Small pieces, so that a MiB crosses many ring buffers and each buffer is reused.
  staging = new StagingRing(gpu, { buffers: 3, chunkBytes: 64 << 10 });
  readback = new ReadbackRing(gpu, { buffers: 2, chunkBytes: 48 << 10 });
});
afterAll(() => {
  staging?.destroy();
  readback?.destroy();
  gpu?.destroy();
});

function randomBytes(n: number, salt: number, shared: boolean): Uint8Array {
  const bytes = new Uint8Array(shared ? new SharedArrayBuffer(n) : new ArrayBuffer(n));
  return fillRandom(bytes, (SEED ^ Math.imul(salt, 0x9e3779b1)) >>> 0);
}

function expectSame(got: Uint8Array, want: Uint8Array, what: string): void {
  const at = firstDifference(got, want);
  expect(at, `${what}: first difference at byte ${at} (seed ${SEED})`).toBe(-1);
}

/** A buffer with room for OFFSET + n + guard words, filled with GUARD through writeBuffer. */
function guardedBuffer(n: number): { buffer: GPUBuffer; size: number } {
  const size = OFFSET + deviceSpan(n) + 16;
  const buffer = createDeviceBuffer(gpu, `guarded-${n}`, size);
  writeDevice(gpu, buffer, 0, new Uint8Array(size).fill(GUARD));
  return { buffer, size };
}

/** Bytes outside [OFFSET, OFFSET + n) are GUARD, except the padding of the last word (zero). */
function expectGuards(all: Uint8Array, n: number, padding: 'zero' | 'any'): void {
  const head = all.subarray(0, OFFSET);
  expect(head.every((b) => b === GUARD)).toBe(true);
  const pad = all.subarray(OFFSET + n, OFFSET + deviceSpan(n));
  if (padding === 'zero') expect(pad.every((b) => b === 0)).toBe(true);
  const tail = all.subarray(OFFSET + deviceSpan(n));
  expect(tail.every((b) => b === GUARD)).toBe(true);
}

type Upload = (dst: GPUBuffer, off: number, data: Uint8Array) => Promise<void>;
const uploads: Record<string, Upload> = {
  writeBuffer: async (dst, off, data) => writeDevice(gpu, dst, off, data),
  'staging ring': (dst, off, data) => staging.write(dst, off, data),
  'one-off staging': (dst, off, data) => writeDeviceStaged(gpu, dst, off, data),
};
type Download = (src: GPUBuffer, off: number, n: number) => Promise<Uint8Array>;
const downloads: Record<string, Download> = {
  'readback ring': (src, off, n) => readback.read(src, off, n),
  'one-off read': (src, off, n) => readDevice(gpu, src, off, n),
};

describe.each(Object.entries(uploads))('host -> device by %s', (name, upload) => {
  for (const shared of [false, true]) {
    it.each(SIZES)(
      `${shared ? 'SharedArrayBuffer' : 'plain'} source of %i bytes round-trips exactly`,
      async (n) => {
        const data = randomBytes(n, n * 7 + (shared ? 1 : 0), shared);
        const { buffer, size } = guardedBuffer(n);
        try {
          await gpu.scoped(`${name} ${n}`, async () => {
            await upload(buffer, OFFSET, data);
            for (const [how, download] of Object.entries(downloads)) {
              expectSame(await download(buffer, OFFSET, n), data, `${name} then ${how}, ${n} bytes`);
            }
            expectGuards(await readDevice(gpu, buffer, 0, size), n, 'zero');
          });
        } finally {
          buffer.destroy();
        }
      },
    );
  }
});

describe('the staging ring shared by writers at once', () => {
  it('writers that wait for buffers at the same time each land their own bytes', async () => {
    // Three buffers of 64 KiB for eight writes of 100 KiB: every writer waits for a buffer to be
    // mapped again while the others fill theirs; a writer whose range another one submitted before
    // it was filled would land stale bytes.
    const n = 100_000;
    const data = Array.from({ length: 8 }, (_, i) => randomBytes(n, 991 + i, i % 2 === 1));
    const dst = data.map((_, i) => createDeviceBuffer(gpu, `writer-${i}`, n));
    try {
      await gpu.scoped('staging ring, writers at once', async () => {
        await Promise.all(data.map((d, i) => staging.write(dst[i], 0, d)));
        for (const [i, d] of data.entries()) expectSame(await readback.read(dst[i], 0, n), d, `writer ${i}`);
      });
    } finally {
      for (const b of dst) b.destroy();
    }
  });
});

describe('device -> device and device -> host', () => {
  it.each(SIZES)('copyDevice of %i bytes round-trips exactly and leaves its neighbours', async (n) => {
    const data = randomBytes(n, n * 13, false);
    const src = createDeviceBuffer(gpu, 'src', OFFSET + n);
    const { buffer: dst, size } = guardedBuffer(n);
    try {
      await gpu.scoped(`copyDevice ${n}`, async () => {
        writeDevice(gpu, src, OFFSET, data);
        copyDevice(gpu, src, OFFSET, dst, OFFSET, n);
        expectSame(await readback.read(dst, OFFSET, n), data, `copyDevice ${n}`);
        expectGuards(await readDevice(gpu, dst, 0, size), n, 'any');
      });
    } finally {
      src.destroy();
      dst.destroy();
    }
  });

  it('reads into a SharedArrayBuffer view, writing exactly n bytes', async () => {
    const n = 4097;
    const data = randomBytes(n, 99, false);
    const buf = createDeviceBuffer(gpu, 'sab-read', n);
    try {
      writeDevice(gpu, buf, 0, data);
      const into = new Uint8Array(new SharedArrayBuffer(n + 8)).fill(GUARD);
      await readback.read(buf, 0, n, into.subarray(4, 4 + n));
      expectSame(into.subarray(4, 4 + n), data, 'read into shared memory');
      expect([...into.subarray(0, 4), ...into.subarray(4 + n)].every((b) => b === GUARD)).toBe(true);
    } finally {
      buf.destroy();
    }
  });

  it('host memcpy copies exactly and refuses a short destination', () => {
    const data = randomBytes(4097, 5, true);
    const dst = new Uint8Array(4097);
    copyHost(dst, data);
    expectSame(dst, data, 'copyHost');
    expect(() => copyHost(new Uint8Array(3), data)).toThrow(HmmlabError);
  });
});

describe('bad ranges are EINVAL before anything reaches the GPU', () => {
  const codeOf = async (fn: () => unknown): Promise<string | undefined> => {
    try {
      await fn();
    } catch (e) {
      return e instanceof HmmlabError ? e.code : `not a HmmlabError: ${e}`;
    }
    return undefined;
  };

  it('rejects unaligned offsets, ranges past the end and overlaps', async () => {
    const buf = createDeviceBuffer(gpu, 'small', 64);
    try {
      await gpu.scoped('bad ranges', async () => {
        expect(await codeOf(() => writeDevice(gpu, buf, 2, new Uint8Array(4)))).toBe('EINVAL');
        expect(await codeOf(() => writeDevice(gpu, buf, 60, new Uint8Array(5)))).toBe('EINVAL');
        expect(await codeOf(() => staging.write(buf, 0, new Uint8Array(65)))).toBe('EINVAL');
        expect(await codeOf(() => readback.read(buf, 4, 61))).toBe('EINVAL');
        expect(await codeOf(() => copyDevice(gpu, buf, 0, buf, 8, 16))).toBe('EINVAL');
        expect(await codeOf(() => readback.read(buf, 0, 8, new Uint8Array(4)))).toBe('EINVAL');
      });
      // The rings still work after refusing.
      const data = randomBytes(64, 3, false);
      await staging.write(buf, 0, data);
      expectSame(await readback.read(buf, 0, 64), data, 'after EINVAL');
    } finally {
      buf.destroy();
    }
  });
});

describe('GPU errors', () => {
  it('a validation error inside gpu.scoped is an EGPU error naming the step, and the device goes on', async () => {
    const buf = createDeviceBuffer(gpu, 'scoped', 64);
    try {
      let err: unknown;
      try {
        await gpu.scoped('unaligned raw copy', () => {
          const enc = gpu.device.createCommandEncoder();
          enc.copyBufferToBuffer(buf, 2, buf, 32, 4); // offset 2: invalid, bypassing copyDevice's checks
          gpu.device.queue.submit([enc.finish()]);
        });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(HmmlabError);
      expect((err as HmmlabError).code).toBe('EGPU');
      expect((err as HmmlabError).message).toContain('unaligned raw copy');
      const data = randomBytes(64, 11, false);
      await gpu.scoped('after EGPU', () => writeDevice(gpu, buf, 0, data));
      expectSame(await readback.read(buf, 0, 64), data, 'after EGPU');
    } finally {
      buf.destroy();
    }
  });
});
