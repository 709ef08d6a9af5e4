/**
 * `hmmlab demo` (what `npm start` runs): a tour of the lab as a list of chapters, each a short
 * run on the real device with its output. After the adapter and the copy ceiling comes the story of
 * the December 2016 linux-mm thread, told on the GPU under Jan Kara's mirror scheme: one file, one
 * mount and one device memory shared by the story's chapters (a chapter run alone first runs the
 * ones before it silently). A chapter that fails prints its error and the demo goes on.
 *
 * Every sentence the story prints is made from what the run did (counter deltas, the page-state
 * snapshot), by the narration functions below, never fixed text: a step that did nothing says so.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Command } from 'commander';
import { formatCopyTable } from '../bench/copy.ts';
import { firstDifference } from '../bench/random.ts';
import type { DeviceCounters, DeviceMemory } from '../device/index.ts';
import { errorMessage, HmmlabError, isHmmlabError } from '../errors.ts';
import type { File, FsPageSnapshot, HmmFs } from '../fs/hmmfs.ts';
import type { GpuDevice } from '../gpu/device.ts';
import { patternBytes } from '../oplog/pattern.ts';
import { runCopyBench } from './bench.ts';
import { compareChapter } from './compare.ts';
import { debugEnabled } from './exit.ts';
import { adapterReport, formatAdapterReport, withGpu } from './info.ts';
import { type MountPolicy, openPolicy } from './policy.ts';

export interface DemoContext {
  /** The device every chapter shares (an adapter gives one device; docs/webgpu-findings.md). */
  gpu: GpuDevice;
  /** Print text (a chapter's output goes to stdout). */
  print: (text: string) => void;
  /** Told of each chapter that fails, with the error's code. */
  onFailure?: (chapter: string, code: string) => void;
}

export interface Chapter {
  /** Short name, also what `hmmlab demo --chapter` selects by. */
  name: string;
  title: string;
  run: (ctx: DemoContext) => Promise<void>;
}

export const adapterChapter: Chapter = {
  name: 'adapter',
  title: 'The device: a real WebGPU adapter',
  run: async ({ gpu, print }) => {
    print(formatAdapterReport(adapterReport(gpu)));
  },
};

export const copyChapter: Chapter = {
  name: 'copy',
  title: 'Copy bandwidth: the ceiling for every page copy (hmmlab bench copy)',
  run: async ({ gpu, print }) => {
    const rows = await runCopyBench(gpu, { sizes: [64 << 10, 1 << 20, 16 << 20], iters: 3 });
    print(formatCopyTable(rows));
  },
};

// ---- the 2016 thread on the GPU: Kara's mirror scheme, step by step ----

const PAGE = 4096;
/** 16 pages of 4 KiB: 16,384 words, one device thread each. */
const FILE_PAGES = 16;
const FILE_BYTES = FILE_PAGES * PAGE;
/** Host budget: the story's file fits; the file read for pressure (32 pages) does not. */
const HOST_PAGES = 24;
const PRESSURE_PAGES = 32;
const FILE = 'thread.dat';
const PRESSURE = 'pressure.dat';

/** The state the story's chapters share: one mount over a temp dir, one device memory. */
interface Story {
  dir: string;
  fs: HmmFs;
  dm: DeviceMemory;
  mount: MountPolicy;
  f: File;
  /** The CPU's shared mapping of the file (made by the devread chapter). */
  vma?: ReturnType<File['mmap']>;
  /** What the file must hold: updated by every write the story makes. */
  want: Uint8Array;
  /** Story steps done so far. */
  done: number;
  /** The error that stopped the story, if one did: later chapters are skipped with it. */
  broken?: HmmlabError;
}

type StoryStep = (s: Story, print: (text: string) => void) => Promise<void>;

const stories = new WeakMap<GpuDevice, Promise<Story>>();

async function openStory(gpu: GpuDevice): Promise<Story> {
  // Loaded here: a broken policy module fails the story's chapters, not the whole command.
  const { HmmFs } = await import('../fs/hmmfs.ts');
  const host = await openPolicy('mirror', { gpu, devicePages: 64, pageSize: PAGE, batch: 256 });
  const mount = await host.forMount();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hmmlab-demo-'));
  const hfs = await HmmFs.mount({ dir, pageSize: PAGE, hostPages: HOST_PAGES, policy: mount.policy });
  const f = await hfs.open(FILE, { create: true });
  return { dir, fs: hfs, dm: mount.device!, mount, f, want: new Uint8Array(FILE_BYTES), done: 0 };
}

/** Unmount and remove the story's directory (after the demo, whatever happened). */
async function closeStory(gpu: GpuDevice): Promise<void> {
  const p = stories.get(gpu);
  if (!p) return;
  stories.delete(gpu);
  const s = await p.catch(() => null);
  if (!s) return;
  await s.fs.unmount().catch(() => {});
  s.mount.close();
  fs.rmSync(s.dir, { recursive: true, force: true });
}

const n = (x: number) => x.toLocaleString('en-US');
const kib = (bytes: number) => `${n(bytes / 1024)} KiB`;
const plural = (x: number, one: string, many = `${one}s`) => `${n(x)} ${x === 1 ? one : many}`;

function counters(dm: DeviceMemory): DeviceCounters {
  return { ...dm.counters };
}

function since(dm: DeviceMemory, before: DeviceCounters): DeviceCounters {
  const d = { ...dm.counters };
  for (const k of Object.keys(d) as (keyof DeviceCounters)[]) d[k] -= before[k];
  return d;
}

/** A vmstat counter's change since `before`. */
function vmDelta(s: Story, before: Record<string, number>, name: string): number {
  return (s.fs.vmstat()[name] ?? 0) - (before[name] ?? 0);
}

/** "checked: OK" only after a byte-by-byte comparison; otherwise the first difference, and throw. */
function check(what: string, got: Uint8Array, want: Uint8Array): string {
  const d = firstDifference(got, want);
  if (d >= 0) {
    throw new HmmlabError(
      'EIO',
      `${what}: ${n(got.length)} bytes, expected ${n(want.length)}; first difference at offset ${d}`,
    );
  }
  return `${what} checked against the expected pattern: OK`;
}

// ---- narration: sentences made from what the run did (exported for the tests) ----

/** What is real in this lab and what is emulated, said once at the start. */
export const REAL_AND_EMULATED =
  'Real: the device memory (GPU buffers), the device threads (WGSL kernels through a device MMU), ' +
  'the files and their pread/pwrite/fdatasync. Emulated: the CPU page tables (one PTE word a page ' +
  "that hmmlab's own load/store paths check). Direct I/O bypasses hmmlab's page cache but uses " +
  'buffered pread/pwrite on the backing file; a hole punch writes zeros over the range (no fallocate).\n';

/** What a raw device fault is here, said at the first fault counts. */
export const RAW_FAULT_NOTE =
  '  (raw: one per faulting 4-byte access, every thread records its own; a GPU fault buffer holds one ' +
  'entry per faulting warp and TLB, so hardware logs fewer raw faults for the same pages)\n';

/** Fault-service numbers of a device run: raw vs unique faults, batches, replays, bytes moved. */
export function faultLine(d: DeviceCounters): string {
  return (
    `  faults: ${n(d.faultsRaw)} raw -> ${n(d.faultsUnique)} unique ` +
    `(${n(d.faultsRead)} read, ${n(d.faultsWrite)} write), ${plural(d.batches, 'batch', 'batches')}, ` +
    `${plural(d.launches, 'launch', 'launches')} (${plural(d.replays, 'replay')})\n` +
    `  copied: ${kib(d.bytesHostToDevice)} host->device, ${kib(d.bytesDeviceToHost)} device->host; ` +
    `device PTEs: ${plural(d.shootdowns, 'shootdown')}, ${plural(d.revocations, 'revocation')}, ` +
    `${plural(d.writeProtects, 'write-protect')}\n`
  );
}

/** Page states grouped: "16 pages with A D, CPU ro, device ro". */
export function stateSummary(rows: readonly FsPageSnapshot[]): string {
  const groups = new Map<string, number>();
  for (const r of rows) {
    const k = `A ${r.host}, CPU ${r.cpu}, device ${r.dev}`;
    groups.set(k, (groups.get(k) ?? 0) + 1);
  }
  return [...groups].map(([k, c]) => `${plural(c, 'page')} with ${k}`).join('; ');
}

/** The CPU's mapping of the file before the device reads it: how many of its PTEs are writable. */
export function cpuMappingSentence(f: {
  faults: number;
  mkwrites: number;
  writable: number;
  pages: number;
}): string {
  return (
    `the CPU maps the file and stores through the mapping: ${plural(f.faults, 'fault')}, ` +
    `${plural(f.mkwrites, 'page_mkwrite call')}; ${n(f.writable)} of ${plural(f.pages, 'CPU PTE')} writable now.\n`
  );
}

/** Kara's device read fault, as the counters say it went. */
export function readFaultSentence(f: {
  cpuWriteProtected: number;
  pagesCopied: number;
  bytesCopied: number;
  states: string;
}): string {
  const wp =
    f.cpuWriteProtected > 0
      ? `write-protected ${plural(f.cpuWriteProtected, 'writable CPU PTE')} (page_mkclean)`
      : 'no CPU PTE was writable, so none to write-protect';
  const copy =
    f.pagesCopied > 0
      ? `copied ${plural(f.pagesCopied, 'page')} A -> A' (${kib(f.bytesCopied)})`
      : "copied nothing (A' already held the data)";
  return `Kara's read fault: ${wp}, ${copy}, mapped A' read-only; A stays in the page cache: ${f.states}.\n`;
}

/** Kara's device write fault, as the counters say it went. */
export function writeFaultSentence(f: {
  mkwrites: number;
  cpuUnmapped: number;
  bytesCopied: number;
}): string {
  const copy =
    f.bytesCopied === 0
      ? "no copy: A' already held the data, the fault upgraded it"
      : `${kib(f.bytesCopied)} copied A -> A' first`;
  return `  page_mkwrite for ${plural(f.mkwrites, 'page')}, ${plural(f.cpuUnmapped, 'CPU PTE')} cleared; ${copy}.\n`;
}

/** CPU reads of device-written pages, as the counters and the snapshot say they went. */
export function cpuReadSentences(f: {
  firstHalfCopied: number;
  firstHalfBytes: number;
  firstHalfProtects: number;
  stillOnDevice: number;
  laterCopied: number;
  bytesInAll: number;
  pages: number;
}): string {
  const stays =
    f.stillOnDevice > 0
      ? `${plural(f.stillOnDevice, 'page')} of the other half still rw on the device`
      : 'nothing left rw on the device';
  const once = f.firstHalfCopied + f.laterCopied === f.pages ? ', each page once' : '';
  return (
    `read(2) of the first half: ${plural(f.firstHalfCopied, 'page')} copied back ` +
    `(${kib(f.firstHalfBytes)}), ${plural(f.firstHalfProtects, 'device write-protect')}; ${stays}.\n` +
    `mmap load of the whole file: ${plural(f.laterCopied, 'more page')} copied back; ` +
    `${kib(f.bytesInAll)} device->host in all${once}.\n`
  );
}

/** Reclaim under the small host budget, as the counters and the snapshot say it went. */
export function reclaimSentence(f: {
  reclaimed: number;
  deviceEntries: number;
  entriesNow: number;
  pages: number;
}): string {
  const only =
    f.entriesNow > 0 ? ': their data lives only on the device' : ': every page of it is still in host memory';
  return (
    `read(2) of ${PRESSURE} (${PRESSURE_PAGES} pages) with ${HOST_PAGES} host pages: reclaim took ` +
    `${plural(f.reclaimed, 'page')}; ${plural(f.deviceEntries, 'page')} of ${FILE} left a device entry ` +
    `(${n(f.entriesNow)} of ${f.pages} are E now)${only}.\n`
  );
}

/** readpage over device entries, as the counters say it went. */
export function readpageSentence(f: { entries: number; pulledBytes: number; diskKiB: number }): string {
  const disk =
    f.diskKiB === 0
      ? `nothing read from disk${f.pulledBytes > 0 ? ", whose copy is older than the device's" : ''}`
      : `${n(f.diskKiB)} KiB read from disk`;
  return (
    `read(2) of ${FILE}: readpage found ${plural(f.entries, 'device entry', 'device entries')} and pulled ` +
    `${kib(f.pulledBytes)} from the device; ${disk}.\n`
  );
}

/** A few snapshot rows (like test_hmm's SNAPSHOT): host state, flags, CPU and device permissions. */
function snapshotExcerpt(s: Story, name: string, indices: number[]): string {
  const rows = indices.map((i) => s.fs.snapshot(name, i, i)[0]);
  const head = '  page  A  flags  cpu  dev  frame  dev-dirty\n';
  return (
    head +
    rows
      .map(
        (r) =>
          `  ${String(r.index).padStart(4)}  ${r.host}  ${(r.flags || '-').padEnd(5)}  ${r.cpu.padEnd(3)}  ` +
          `${r.dev.padEnd(3)}  ${String(r.frame ?? '-').padStart(5)}  ${r.devDirty ? 'yes' : 'no'}`,
      )
      .join('\n') +
    '\n'
  );
}

/** The pages a snapshot excerpt shows: the first two and the last. */
const EXCERPT = [0, 1, FILE_PAGES - 1];

const fileRows = (s: Story) => s.fs.snapshot(FILE, 0, FILE_PAGES - 1);

/** The story, in order: each step is one chapter. */
const STORY: { name: string; title: string; step: StoryStep }[] = [
  {
    name: 'pagecache',
    title: 'A file on disk, through the page cache',
    step: async (s, print) => {
      const data = patternBytes(0, FILE_BYTES, 1);
      const before = s.fs.vmstat();
      await s.f.write(0, data);
      await s.f.fsync();
      const written = vmDelta(s, before, 'nr_written');
      s.want.set(data);
      const fB = await s.fs.open(PRESSURE, { create: true });
      await fB.write(0, patternBytes(0, PRESSURE_PAGES * PAGE, 9));
      await fB.fsync();
      const dropped = await s.fs.dropCaches();
      print(
        `write(2) of ${kib(FILE_BYTES)} (${plural(FILE_PAGES, 'page')} of ${kib(PAGE)}) to ${FILE}, then fsync: ` +
          `${plural(written, 'page')} written back; a second file, ${PRESSURE}, ` +
          `${plural(PRESSURE_PAGES, 'page')}, for later; then drop_caches dropped ${plural(dropped, 'page')}.\n`,
      );
      const mid = s.fs.vmstat();
      const got = await s.f.read(0, FILE_BYTES);
      print(
        `read(2) of the whole file: ${n(vmDelta(s, mid, 'pgpgin'))} KiB read from disk by readpage ` +
          `(${plural(vmDelta(s, mid, 'pgra'), 'page')} by readahead, ` +
          `${plural(vmDelta(s, mid, 'ra_sync'), 'window')}); host budget ${HOST_PAGES} pages.\n` +
          `${check('read(2)', got, s.want)}\n`,
      );
    },
  },
  {
    name: 'devread',
    title: '16,384 device threads read it: device read faults, coalesced, serviced, replayed',
    step: async (s, print) => {
      // A writable CPU mapping first, so that the read fault has CPU PTEs to write-protect.
      const vm0 = s.fs.vmstat();
      s.vma = s.f.mmap();
      const data = patternBytes(0, FILE_BYTES, 5);
      await s.vma.store(0, data);
      s.want.set(data);
      const writable = fileRows(s).filter((r) => r.cpu === 'rw').length;
      const mapping = cpuMappingSentence({
        faults: vmDelta(s, vm0, 'pgfault'),
        mkwrites: vmDelta(s, vm0, 'pgmkwrite'),
        writable,
        pages: FILE_PAGES,
      });
      const vm = s.fs.vmstat();
      const before = counters(s.dm);
      const got = await s.f.deviceRead(0, FILE_BYTES);
      const d = since(s.dm, before);
      print(
        mapping +
          `then devread of ${kib(FILE_BYTES)} (tag 5, byte x = (x + 35) mod 251): ${n(FILE_BYTES / 4)} device ` +
          'threads, one per 4-byte word, every access translated by the device MMU (WGSL).\n' +
          faultLine(d) +
          RAW_FAULT_NOTE +
          readFaultSentence({
            cpuWriteProtected: vmDelta(s, vm, 'pgmkclean'),
            pagesCopied: d.copiesToDevice,
            bytesCopied: d.bytesHostToDevice,
            states: stateSummary(fileRows(s)),
          }) +
          snapshotExcerpt(s, FILE, EXCERPT) +
          `${check('devread', got, s.want)}\n`,
      );
    },
  },
  {
    name: 'devwrite',
    title: "... and write it: page_mkwrite, CPU mappings cleared, A stale (S), A' read-write",
    step: async (s, print) => {
      const mapped = s.fs.vmstat();
      const before = counters(s.dm);
      await s.f.deviceWrite(0, FILE_BYTES, 2);
      s.want.set(patternBytes(0, FILE_BYTES, 2));
      const d = since(s.dm, before);
      print(
        `devwrite of ${kib(FILE_BYTES)} with tag 2 (byte x = (x + 14) mod 251), ${n(FILE_BYTES / 4)} threads:\n` +
          faultLine(d) +
          writeFaultSentence({
            mkwrites: vmDelta(s, mapped, 'device_mkwrite'),
            cpuUnmapped: vmDelta(s, mapped, 'pgunmap'),
            bytesCopied: d.bytesHostToDevice,
          }) +
          `  now: ${stateSummary(fileRows(s))}.\n` +
          snapshotExcerpt(s, FILE, EXCERPT),
      );
    },
  },
  {
    name: 'cpuread',
    title: "CPU reads pull the data back: write-protect A', copy A' -> A",
    step: async (s, print) => {
      const before = counters(s.dm);
      const half = (FILE_PAGES / 2) * PAGE;
      const first = await s.f.read(0, half);
      const d1 = since(s.dm, before);
      const stillOnDevice = fileRows(s).filter((r) => r.index >= FILE_PAGES / 2 && r.dev === 'rw').length;
      const got = await (s.vma ?? s.f.mmap()).load(0, FILE_BYTES);
      const d = since(s.dm, before);
      print(
        cpuReadSentences({
          firstHalfCopied: d1.copiesFromDevice,
          firstHalfBytes: d1.bytesDeviceToHost,
          firstHalfProtects: d1.writeProtects,
          stillOnDevice,
          laterCopied: d.copiesFromDevice - d1.copiesFromDevice,
          bytesInAll: d.bytesDeviceToHost,
          pages: FILE_PAGES,
        }) +
          snapshotExcerpt(s, FILE, EXCERPT) +
          `${check('read(2) of the first half', first, s.want.subarray(0, half))}\n` +
          `${check('mmap load', got, s.want)}\n`,
      );
    },
  },
  {
    name: 'reclaim',
    title: 'Reclaim under a small host budget leaves device entries (E); readpage pulls from the device',
    step: async (s, print) => {
      await s.f.deviceWrite(0, FILE_BYTES, 3);
      s.want.set(patternBytes(0, FILE_BYTES, 3));
      const written = stateSummary(fileRows(s));
      const before = s.fs.vmstat();
      const fB = await s.fs.open(PRESSURE, { create: true });
      await fB.read(0, PRESSURE_PAGES * PAGE);
      const entries = fileRows(s).filter((r) => r.host === 'E').length;
      print(
        `devwrite of the whole file again (tag 3): ${written}.\n` +
          reclaimSentence({
            reclaimed: vmDelta(s, before, 'pgsteal_direct'),
            deviceEntries: vmDelta(s, before, 'workingset_device_entry'),
            entriesNow: entries,
            pages: FILE_PAGES,
          }) +
          snapshotExcerpt(s, FILE, EXCERPT),
      );
      const mid = s.fs.vmstat();
      const c = counters(s.dm);
      const got = await s.f.read(0, FILE_BYTES);
      const d = since(s.dm, c);
      print(
        readpageSentence({ entries, pulledBytes: d.bytesDeviceToHost, diskKiB: vmDelta(s, mid, 'pgpgin') }) +
          `${check('read(2)', got, s.want)}\n`,
      );
    },
  },
  {
    name: 'fsync',
    title: 'fsync puts device-written data on disk',
    step: async (s, print) => {
      const off = 3 * PAGE + 512;
      const len = 9 * PAGE;
      await s.f.deviceWrite(off, len, 4);
      s.want.set(patternBytes(off, len, 4), off);
      const before = counters(s.dm);
      const vm = s.fs.vmstat();
      await s.f.fsync();
      const d = since(s.dm, before);
      const disk = new Uint8Array(fs.readFileSync(path.join(s.dir, FILE)));
      const all = s.fs.vmstat();
      const c = s.dm.counters;
      print(
        `devwrite of ${kib(len)} at offset ${n(off)} (tag 4), then fsync: ${kib(d.bytesDeviceToHost)} ` +
          `copied back from the device, ${plural(vmDelta(s, vm, 'nr_written'), 'page')} written to disk.\n` +
          `the file on disk, read with plain fs.readFileSync (${kib(disk.length)}): ` +
          `${check('disk', disk, s.want)}\n` +
          `the whole story: ${n(c.faultsRaw)} device faults raw, ${n(c.faultsUnique)} unique, ` +
          `${plural(c.batches, 'batch', 'batches')}, ${plural(c.replays, 'replay')}; ` +
          `${kib(c.bytesHostToDevice)} host->device, ${kib(c.bytesDeviceToHost)} device->host ` +
          `(${plural(all.device_copybacks ?? 0, 'copy-back')}, ${plural(all.device_pulls ?? 0, 'readpage pull')}, ` +
          `${plural(all.device_mkwrite ?? 0, 'device page_mkwrite call')}).\n`,
      );
    },
  },
];

/** Run story step `k`, after the ones before it (silently) if they have not run. */
async function runStory(ctx: DemoContext, k: number): Promise<void> {
  let p = stories.get(ctx.gpu);
  if (!p) {
    p = openStory(ctx.gpu);
    stories.set(ctx.gpu, p);
  }
  const s = await p;
  if (s.broken) throw s.broken;
  try {
    for (; s.done < k; s.done++) await STORY[s.done].step(s, () => {});
    await STORY[k].step(s, ctx.print);
    s.done = k + 1;
  } catch (e) {
    const at = STORY[s.done]?.name ?? STORY[k].name;
    s.broken = new HmmlabError(
      isHmmlabError(e) ? e.code : 'EIO',
      `skipped: the story stopped at chapter "${at}" (${errorMessage(e)})`,
    );
    throw e;
  }
}

export const storyChapters: Chapter[] = STORY.map((c, k) => ({
  name: c.name,
  title: c.title,
  run: (ctx) => runStory(ctx, k),
}));

/**
 * Glisse's point ("there is no way to be notified on every write"), run: device kernels and CPU
 * worker threads increment the same counters and store to the same pages at once, under each
 * policy, with reclaim, device eviction and fsync between (hmmlab stress --concurrent, short).
 */
export const concurrentChapter: Chapter = {
  name: 'concurrent',
  title: 'CPU threads and 20,000 device threads on the same pages at once (hmmlab stress --concurrent)',
  run: async ({ gpu, print }) => {
    const { runConcurrentStress } = await import('../stress/concurrent.ts');
    const seed = 1;
    for (const name of ['mirror', 'migrate'] as const) {
      const host = await openPolicy(name, { gpu, devicePages: 16, pageSize: PAGE, batch: 256 });
      const mount = await host.forMount();
      let r: Awaited<ReturnType<typeof runConcurrentStress>>;
      try {
        r = await runConcurrentStress({
          seed,
          deviceThreads: 20_000,
          cpuThreads: 2,
          durationMs: 2000,
          pageSize: PAGE,
          hostPages: 16,
          policy: mount.policy!,
        });
      } finally {
        mount.close();
        host.close();
      }
      if (r.violations.length) {
        throw new HmmlabError(
          'EIO',
          `${name}: ${plural(r.violations.length, 'violation')}: ${r.violations[0].message} ` +
            `(repeat: hmmlab stress --concurrent --policy ${name} --seed ${seed} --duration 2)`,
        );
      }
      print(
        `${name}: ${n(r.atomicKernels + r.slotKernels)} kernels of 20,000 threads and 2 CPU workers for ` +
          `${(r.durationMs / 1000).toFixed(1)} s: ${n(r.deviceIncrements)} device and ${n(r.cpuIncrements)} CPU ` +
          `increments, ${n(r.cpuAccessesDuringKernels)} CPU accesses while a kernel was in flight; ` +
          `${plural(r.mmuIntervalRetries, 'mmu_interval retry', 'mmu_interval retries')}, ` +
          `${plural(r.shootdownWaits, 'CPU shootdown wait')}, ${plural(r.deviceEvictions, 'device eviction')}, ` +
          `${plural(r.fsyncs, 'fsync')}. Every counter, every slot and the file on disk after a remount: ` +
          `${r.lostUpdates === 0 && r.diskMatches ? 'checked: OK' : 'MISMATCH'}.\n`,
      );
    }
  },
};

/** The demo, in order. Append new chapters here. */
export const CHAPTERS: Chapter[] = [
  adapterChapter,
  copyChapter,
  ...storyChapters,
  compareChapter,
  concurrentChapter,
];

/** Runs the chapters; a failed chapter prints its error and the others still run. Returns the failures. */
export async function runDemo(ctx: DemoContext, chapters: readonly Chapter[] = CHAPTERS): Promise<number> {
  let failed = 0;
  try {
    for (const [i, chapter] of chapters.entries()) {
      ctx.print(`\n== ${i + 1}. ${chapter.title}\n\n`);
      const t0 = performance.now();
      try {
        await chapter.run(ctx);
      } catch (e) {
        failed++;
        const code = isHmmlabError(e) ? e.code : 'EINTERNAL';
        ctx.onFailure?.(chapter.name, code);
        ctx.print(`!! chapter "${chapter.name}" failed: ${code}: ${errorMessage(e)}\n`);
        if (!isHmmlabError(e) && e instanceof Error && e.stack && debugEnabled()) ctx.print(`${e.stack}\n`);
      }
      if (storyChapters.includes(chapter)) ctx.print(`(${(performance.now() - t0).toFixed(0)} ms)\n`);
    }
  } finally {
    await closeStory(ctx.gpu);
  }
  return failed;
}

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('a short tour of the lab on the real device (what `npm start` runs)')
    .option(
      '--chapter <names>',
      `comma-separated chapters to run, each once, in the story's order (${CHAPTERS.map((c) => c.name).join(', ')}); ` +
        'a story chapter first runs the ones before it, silently',
    )
    .addHelpText('after', '\nExample:\n  hmmlab demo --chapter devread,reclaim')
    .action(async (opts: { chapter?: string }, cmd: Command) => {
      const chapters = opts.chapter === undefined ? CHAPTERS : selectChapters(opts.chapter);
      await withGpu(cmd, async (gpu) => {
        process.stdout.write(
          'hmmlab: real GPU memory as un-addressable device memory for page-cache pages\n' +
            REAL_AND_EMULATED,
        );
        const codes: string[] = [];
        const failed = await runDemo(
          { gpu, print: (text) => process.stdout.write(text), onFailure: (_name, code) => codes.push(code) },
          chapters,
        );
        if (failed > 0) {
          process.stderr.write(
            `hmmlab: ${codes[0]}: demo: ${failed} chapter${failed === 1 ? '' : 's'} failed (marked !! above)\n`,
          );
          process.exitCode = 1;
        }
      });
    });
}

/** The chapters `names` lists, each once, in the story's order (whatever order they were given in). */
export function selectChapters(names: string): Chapter[] {
  const wanted = new Set<string>();
  for (const raw of names.split(',')) {
    const name = raw.trim();
    if (!CHAPTERS.some((c) => c.name === name)) {
      throw new HmmlabError(
        'EINVAL',
        `unknown demo chapter "${name}": expected one of ${CHAPTERS.map((c) => c.name).join(', ')}`,
      );
    }
    wanted.add(name);
  }
  return CHAPTERS.filter((c) => wanted.has(c.name));
}
