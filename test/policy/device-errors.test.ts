/**
 * The device half's errors under each device policy (mirror, migrate) and page size, on the real
 * adapter: a device write that page_mkwrite refuses fails those pages' accesses with a SIGBUS-like
 * EFAULT naming them while the other threads' writes land; device loss while the device holds dirty
 * pages reports which pages were lost (EIO), never hangs, and what the CPU held still reaches the
 * disk (under migrate a dirty page the device read moved there with its data, so it is lost with the
 * device and named); an orderly detach copies back every page the device holds first, as device
 * hot-unplug must (under migrate every page comes home: A was freed when it moved).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { HmmlabError } from '../../src/errors.ts';
import type { GpuDevice } from '../../src/gpu/device.ts';
import { checkInvariants } from '../../src/policy/invariants.ts';
import { rejection } from '../helpers/rejection.ts';
import {
  type DeviceLab,
  type DevicePolicyName,
  diskBytes,
  expectBytes,
  MATRIX,
  mountDevice,
  openGpu,
  pattern,
} from './helpers.ts';

const NAME = 'err.dat';
const opened: { gpu: GpuDevice; lab: DeviceLab | null }[] = [];

afterEach(async () => {
  for (const o of opened.splice(0)) {
    await o.lab?.cleanup().catch(() => {});
    if (!o.gpu.lost) o.gpu.destroy();
  }
});

async function setup(policy: DevicePolicyName, pageSize: number, blocks?: number) {
  const gpu = await openGpu(5_000); // a hang fails fast
  const slot: { gpu: GpuDevice; lab: DeviceLab | null } = { gpu, lab: null };
  opened.push(slot);
  slot.lab = await mountDevice(gpu, { policy, pageSize, hostPages: 64, devicePages: 64, blocks });
  return slot.lab;
}

describe.each(MATRIX)('device errors (%s), page size %i', (policy, P) => {
  const migrate = policy === 'migrate';
  it('a device write that page_mkwrite refuses fails with EFAULT naming the pages; the other writes land', async () => {
    // Pages 0-1 have blocks; pages 2-3 are a hole past them, and the budget has no block left.
    const lab = await setup(policy, P, 2);
    const f = await lab.fs.open(NAME, { create: true });
    await f.write(0, pattern(0, 2 * P, 1));
    await f.truncate(4 * P);
    expect(lab.fs.blocksUsed).toBe(2);
    const e = await rejection(f.deviceWrite(0, 4 * P, 2));
    expect(e.code).toBe('EFAULT');
    expect(e.message).toMatch(/SIGBUS/);
    expect(e.message).toMatch(/pages 2-3\b/);
    expect(e.message).not.toMatch(/page 0\b|pages 0\b|\b0-/);
    // The refused pages were not written; the others were, on every path.
    expectBytes(await f.read(0, 2 * P), pattern(0, 2 * P, 2), 'pages 0-1 after the partly refused write');
    expectBytes(await f.read(2 * P, 2 * P), new Uint8Array(2 * P), 'refused pages 2-3');
    expectBytes(
      await f.deviceRead(0, 4 * P),
      [pattern(0, 2 * P, 2), new Uint8Array(2 * P)].reduce(cat),
      'device',
    );
    await checkInvariants(lab.fs);
    await f.fsync();
    expect(lab.fs.blocksUsed).toBe(2);
    expectBytes(diskBytes(lab.dir, NAME).subarray(0, 2 * P), pattern(0, 2 * P, 2), 'disk pages 0-1');
  });

  it('device loss while the device holds dirty pages: EIO naming them, no hang, CPU data on disk', async () => {
    const lab = await setup(policy, P);
    const f = await lab.fs.open(NAME, { create: true });
    await f.write(0, pattern(0, 8 * P, 1));
    await f.fsync();
    await f.write(0, pattern(0, 4 * P, 2)); // pages 0-3: dirty, held by the CPU only
    await f.deviceWrite(4 * P, 4 * P, 3); // pages 4-7: dirty, held by the device only
    // Page 0 readable on the device too: mirror, a clean copy beside A; migrate, A moved there, dirty.
    await f.deviceRead(0, 4);
    const held = migrate ? 'E' : 'S';
    expect(lab.fs.snapshot(NAME, 4, 7).every((r) => r.host === held && r.dev === 'rw')).toBe(true);
    const t0 = Date.now();
    lab.gpu.destroy();
    const e = await rejection(f.fsync());
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect(e.code).toBe('EIO');
    expect(e.message).toMatch(/lost/);
    // The CPU's pages are not lost; under migrate page 0 was no longer the CPU's.
    expect(e.message).toMatch(migrate ? /pages 0, 4-7\b/ : /pages 4-7\b/);
    expect(e.message).not.toMatch(/\b0-|\b[1-3]-[0-9]|\b[1-3],/);
    // Device ops fail from now on, at once.
    // The loss was reported once (by the fsync); the device is gone for good: ENODEV naming why.
    const again = await rejection(f.deviceRead(0, 4));
    expect(again.code).toBe('ENODEV');
    expect(again.message).toMatch(/no device: the GPU was lost/);
    // Unmount writes what the CPU held (it may report the loss again).
    await lab.fs.unmount().catch((x) => expect(x).toBeInstanceOf(HmmlabError));
    expect(Date.now() - t0).toBeLessThan(30_000);
    const disk = diskBytes(lab.dir, NAME);
    expect(disk.length).toBe(8 * P);
    // Page 0 under migrate: its newest data went with the device; the disk has what it had.
    const cpuHeld = pattern(0, 4 * P, 2);
    if (migrate) cpuHeld.set(pattern(0, P, 1));
    expectBytes(disk.subarray(0, 4 * P), cpuHeld, 'CPU-held pages on disk after the loss');
  }, 60_000);

  it('an orderly detach first copies back every page the device holds', async () => {
    const lab = await setup(policy, P);
    const f = await lab.fs.open(NAME, { create: true });
    await f.write(0, pattern(0, 8 * P, 1));
    await f.fsync();
    await f.deviceWrite(P + 8, 3 * P, 2); // pages 1-4 dirty on the device, 1 and 4 partly
    await f.deviceRead(6 * P, 2 * P); // pages 6-7: clean copies
    const want = pattern(0, 8 * P, 1);
    want.set(pattern(P + 8, 3 * P, 2), P + 8);
    const before = lab.dm.counters.bytesDeviceToHost;
    await lab.policy.detach();
    // mirror: the dirty pages, once each; migrate: every page the device holds comes home
    expect(lab.dm.counters.bytesDeviceToHost - before).toBe((migrate ? 6 : 4) * P);
    const rows = lab.fs.snapshot(NAME, 0, 7);
    expect(rows.map((r) => r.dev)).toEqual(Array.from({ length: 8 }, () => '-'));
    expect(rows.map((r) => r.host).join('')).toMatch(/^[-CD]{8}$/); // no S, no E left
    await checkInvariants(lab.fs);
    const e = await rejection(f.deviceRead(0, 4));
    expect(e.code).toBe('ENODEV');
    expectBytes(await f.read(0, 8 * P), want, 'read(2) after detach');
    await f.fsync();
    expectBytes(diskBytes(lab.dir, NAME), want, 'disk after detach and fsync');
  });
});

function cat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}
