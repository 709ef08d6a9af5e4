/**
 * The policy seam (src/policy/policy.ts) as the page cache drives it: every CPU path calls its hook,
 * and the device-entry paths (reclaim leaving an entry, readpage pulling from the device, writeback
 * of a device entry through a bounce buffer) work. The "device" here is host memory, as
 * lib/test_hmm.c's dmirror is: a working policy that keeps its copies A' in a Map, not a mock.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { type AddressSpace, type DeviceEntry, folio_mark_uptodate, type Page } from '../../src/mm/index.ts';
import type { CoherencePolicy, CpuAccess } from '../../src/policy/policy.ts';
import { diskBytes, equalBytes, type Lab, mountLab, pattern } from '../fs/helpers.ts';

/** A RAM "device": read-only copies of pages, dirty once the device writes them behind an entry. */
class RamDevicePolicy implements CoherencePolicy {
  readonly name = 'ram-device';
  readonly calls: string[] = [];
  readonly copies = new Map<string, { data: Uint8Array; dirty: boolean }>();
  private key(m: AddressSpace, index: number): string {
    return `${m.id}:${index}`;
  }
  /** A device read fault: A -> A'. */
  copyToDevice(page: Page): void {
    this.copies.set(this.key(page.mapping, page.index), { data: page.data.slice(), dirty: false });
  }
  /** The device writes A' while A is gone (state E). */
  deviceWrite(m: AddressSpace, index: number, bytes: Uint8Array): void {
    const c = this.copies.get(this.key(m, index))!;
    c.data.set(bytes);
    c.dirty = true;
  }
  async cpuNeedsData(_m: AddressSpace, pages: Page[], why: CpuAccess): Promise<void> {
    this.calls.push(`cpuNeedsData:${why}:${pages.map((p) => p.index).join(',')}`);
  }
  async readpageFromDevice(m: AddressSpace, entry: DeviceEntry, page: Page): Promise<boolean> {
    this.calls.push(`readpageFromDevice:${entry.index}`);
    const c = this.copies.get(this.key(m, entry.index));
    if (!c) return false;
    page.data.set(c.data);
    folio_mark_uptodate(page);
    if (c.dirty) page.flags |= 1 << 2; // PG_dirty: the disk has not seen the device's bytes
    c.dirty = false;
    return true;
  }
  async cpuWillWrite(m: AddressSpace, pages: Page[]): Promise<void> {
    this.calls.push(`cpuWillWrite:${pages.map((p) => p.index).join(',')}`);
    for (const p of pages) this.copies.delete(this.key(m, p.index));
  }
  async writebackDeviceEntries(
    m: AddressSpace,
    entries: DeviceEntry[],
    writepage: (index: number, data: Uint8Array) => Promise<void>,
  ): Promise<number> {
    let n = 0;
    for (const entry of entries) {
      this.calls.push(`writebackDeviceEntry:${entry.index}`);
      const c = this.copies.get(this.key(m, entry.index));
      if (!c?.dirty) continue;
      await writepage(entry.index, c.data.slice());
      c.dirty = false; // only once the write landed
      n++;
    }
    return n;
  }
  async invalidateRange(m: AddressSpace, first: number, last: number): Promise<void> {
    this.calls.push(`invalidateRange:${first}-${last === Number.MAX_SAFE_INTEGER ? 'end' : last}`);
    for (const k of [...this.copies.keys()]) {
      const [id, i] = k.split(':').map(Number);
      if (id === m.id && i >= first && i <= last) this.copies.delete(k);
    }
  }
  reclaimDecision(m: AddressSpace, page: Page): 'free' | 'device-entry' | 'keep' {
    return this.copies.has(this.key(m, page.index)) ? 'device-entry' : 'free';
  }
  makeDeviceEntry(m: AddressSpace, page: Page): DeviceEntry {
    return { kind: 'device', index: page.index, token: this.key(m, page.index) };
  }
  stats(): Record<string, number> {
    return { ram_device_copies: this.copies.size };
  }
  /** Calls since the last take(). */
  take(): string[] {
    return this.calls.splice(0);
  }
}

const PS = 4096;
let lab: Lab | undefined;
afterEach(async () => {
  await lab?.cleanup();
  lab = undefined;
});

describe('policy hooks on every CPU path', () => {
  it('read, write, faults, writeback, direct I/O, truncate, punch and unmount call their hooks', async () => {
    const policy = new RamDevicePolicy();
    lab = await mountLab({ hostPages: 64, policy });
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 4 * PS, 1));
    expect(policy.take()).toEqual(['cpuWillWrite:0,1,2,3']);
    await f.write(10, pattern(10, 5, 2));
    expect(policy.take()).toEqual(['cpuNeedsData:write-partial:0', 'cpuWillWrite:0']);
    await f.read(PS, 2 * PS);
    expect(policy.take()).toEqual(['cpuNeedsData:read:1,2']);
    const vma = f.mmap();
    await vma.load(0, 1);
    // Fault-around maps the uptodate neighbours without asking the policy (no I/O, no pull).
    expect(policy.take()).toEqual(['cpuNeedsData:fault:0']);
    expect([1, 2, 3].map((i) => lab!.fs.snapshot('a', i, i)[0].cpu)).toEqual(['ro', 'ro', 'ro']);
    await vma.store(0, new Uint8Array([7]));
    expect(policy.take()).toEqual(['cpuNeedsData:fault:0', 'cpuWillWrite:0']);
    await f.fsync();
    expect(policy.take()).toEqual(['cpuNeedsData:writeback:0,1,2,3']);
    await f.write(PS, pattern(PS, PS, 3));
    policy.take();
    await f.readDirect(0, 2 * PS);
    expect(policy.take()).toEqual(['cpuNeedsData:direct-io:1']);
    await f.writeDirect(2 * PS, pattern(2 * PS, 512, 4));
    expect(policy.take()).toEqual(['invalidateRange:2-2']);
    await f.truncate(PS + 100);
    expect(policy.take()).toEqual(['cpuNeedsData:truncate:1', 'cpuWillWrite:1', 'invalidateRange:2-end']);
    await f.punchHole(0, PS);
    expect(policy.take()).toEqual(['invalidateRange:0-0']);
    await f.write(0, pattern(0, 10, 5));
    policy.take();
    await lab.fs.unmount();
    expect(policy.take()).toEqual(['cpuNeedsData:unmount:0,1', 'invalidateRange:0-end']);
  });
});

describe('device entries', () => {
  it('reclaim leaves a device entry where the device holds the data, and readpage pulls from the device', async () => {
    const policy = new RamDevicePolicy();
    lab = await mountLab({ hostPages: 4, policy });
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, 2 * PS, 1));
    await f.fsync();
    for (const e of f.mapping.i_pages.values()) if (e.kind === 'page') policy.copyToDevice(e);
    await f.read(2 * PS, 0); // nothing
    await lab.fs.dropCaches();
    expect(lab.fs.snapshot('a', 0, 1).map((r) => r.host)).toEqual(['E', 'E']);
    expect(lab.fs.vmstat().workingset_device_entry).toBe(2);
    // Scribble over the disk behind the cache: the data must now come from the device.
    fs.writeFileSync(path.join(lab.dir, 'a'), new Uint8Array(2 * PS).fill(0xee));
    expect(equalBytes(await f.read(0, 2 * PS), pattern(0, 2 * PS, 1))).toBe(true);
    expect(policy.take().filter((c) => c.startsWith('readpageFromDevice'))).toEqual([
      'readpageFromDevice:0',
      'readpageFromDevice:1',
    ]);
  });

  it('writeback of a device entry writes the device data through a bounce buffer', async () => {
    const policy = new RamDevicePolicy();
    lab = await mountLab({ hostPages: 4, policy });
    const f = await lab.fs.open('a', { create: true });
    await f.write(0, pattern(0, PS, 1));
    await f.fsync();
    policy.copyToDevice(f.mapping.i_pages.get(0) as Page);
    await lab.fs.dropCaches();
    policy.deviceWrite(f.mapping, 0, pattern(0, PS, 9));
    await f.fsync();
    expect(equalBytes(diskBytes(lab.dir, 'a'), pattern(0, PS, 9))).toBe(true);
    expect(lab.fs.snapshot('a', 0, 0)[0].host).toBe('E');
  });
});
