/**
 * Each scheme's table is what its paths do (mirrorTable.ts for Kara's mirror, migrateTable.ts for
 * Glisse's migrate). For every state a real mount can reach and every event of the scheme, one page
 * of a real file on the real adapter is put in that state by real ops, the event's own path is
 * driven (devread, devwrite, read(2), an mmap load, write(2), an mmap store, fsync, punch, reclaim of
 * the page, eviction of its frame, unmount), and the test checks that the state it leaves is the
 * row's next state and that the work it did is the row's work, by the counters each work moves:
 *
 *   readpage pgpgin | page_mkwrite device_mkwrite | page_mkclean pgmkclean (when a CPU PTE was
 *   writable) | try_to_unmap pgunmap (unmount tears the mappings down instead) | copy-to-device
 *   device_copies_to_device | device-protect device_write_protects, or a revoke | copy-back
 *   device_copybacks but those bounced to disk (+ spared) | bounce-read device_bounce_reads | bounce-write device_bounce_writes
 *   | bounce-writeback device_bounce_writebacks (when A' is newer than the disk) | writepage
 *   nr_written beyond the bounces | device-revoke device_revocations | device-entry
 *   workingset_device_entry or device_migrations_to_device | alloc-page, drop-page: the state.
 *
 * A counter of work the row does not list must not move. States no op can reach (a page absent from
 * the cache yet mapped by the CPU, a clean page with a writable PTE) are left to the table's own
 * walk (schemeTables.test.ts). 4 KiB pages, a file of one page (no fault-around neighbours).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GpuDevice } from '../../src/gpu/device.ts';
import { type Page, shrink_page, trylock_page, unlock_page } from '../../src/mm/index.ts';
import { checkInvariants } from '../../src/policy/invariants.ts';
import { MIGRATE_TABLE } from '../../src/policy/migrateTable.ts';
import { MIRROR_TABLE } from '../../src/policy/mirrorTable.ts';
import type { DevicePolicyName } from '../../src/policy/registry.ts';
import {
  type DeviceEvent,
  fmt,
  type PageState,
  type SchemeTable,
  WORK_ORDER,
  type Work,
} from '../../src/policy/scheme.ts';
import { type DeviceLab, delta, mountDevice, openGpu, pattern } from './helpers.ts';

const P = 4096;
const NAME = 'row.dat';

interface Recipe {
  /** The ops that put page 0 in the state, from a fresh one-page file. */
  build: (l: Setup) => Promise<void>;
  /** A' (or, for an E page, the entry) holds data the disk lacks. */
  newer: boolean;
}

interface Setup {
  lab: DeviceLab;
  f: Awaited<ReturnType<DeviceLab['fs']['open']>>;
  vma: ReturnType<Setup['f']['mmap']> | null;
}

const page0 = (s: Setup) => s.f.mapping.i_pages.get(0);
const write = (s: Setup, tag: number) => s.f.write(0, pattern(0, P, tag));
const mapped = (s: Setup) => {
  s.vma ??= s.f.mmap();
  return s.vma;
};

/** How to reach each state, by its letters `host/dev/cpu`; the rest are unreachable by ops. */
const RECIPES: Record<string, Recipe> = {
  '-/-/-': {
    build: async (s) => {
      await write(s, 1);
      await s.f.fsync();
      await s.lab.fs.dropCaches();
    },
    newer: false,
  },
  'C/-/-': {
    build: async (s) => {
      await write(s, 1);
      await s.f.fsync();
    },
    newer: false,
  },
  'C/-/ro': {
    build: async (s) => {
      await write(s, 1);
      await s.f.fsync();
      await mapped(s).load(0, 4);
    },
    newer: false,
  },
  'D/-/-': { build: (s) => write(s, 1), newer: false },
  'D/-/ro': {
    build: async (s) => {
      await write(s, 1);
      await mapped(s).load(0, 4);
    },
    newer: false,
  },
  'D/-/rw': {
    build: async (s) => {
      await write(s, 1);
      await mapped(s).store(0, pattern(0, 4, 2));
    },
    newer: false,
  },
  'C/ro/-': {
    build: async (s) => {
      await write(s, 1);
      await s.f.fsync();
      await s.f.deviceRead(0, P);
    },
    newer: false,
  },
  'C/ro/ro': {
    build: async (s) => {
      await write(s, 1);
      await s.f.fsync();
      await mapped(s).load(0, 4);
      await s.f.deviceRead(0, P);
    },
    newer: false,
  },
  'D/ro/-': {
    build: async (s) => {
      await write(s, 1);
      await s.f.deviceRead(0, P);
    },
    newer: false,
  },
  'D/ro/ro': {
    build: async (s) => {
      await write(s, 1);
      await mapped(s).load(0, 4);
      await s.f.deviceRead(0, P);
    },
    newer: false,
  },
  'S/rw/-': {
    build: async (s) => {
      await write(s, 1);
      await s.f.fsync();
      await s.f.deviceWrite(0, P, 3);
    },
    newer: true,
  },
  'E/rw/-': {
    build: async (s) => {
      await write(s, 1);
      await s.f.fsync();
      await s.f.deviceWrite(0, P, 3);
      await s.lab.fs.dropCaches(); // mirror: S -> E; migrate: E already
    },
    newer: true,
  },
  'E/ro/-': {
    build: async (s) => {
      await write(s, 1);
      await s.f.fsync();
      await s.f.deviceRead(0, P);
      await s.lab.fs.dropCaches(); // mirror: C ro -> E ro; migrate: E ro already
    },
    newer: false,
  },
};

/** Drive `event`'s own path on page 0. */
async function drive(s: Setup, event: DeviceEvent): Promise<void> {
  const { lab, f } = s;
  switch (event) {
    case 'device-read-fault':
      await f.deviceRead(0, P);
      return;
    case 'device-write-fault':
      await f.deviceWrite(0, P, 9);
      return;
    case 'cpu-read':
      await f.read(0, P);
      return;
    case 'cpu-read-fault':
      await mapped(s).load(0, 4);
      return;
    case 'cpu-write':
      await write(s, 9);
      return;
    case 'cpu-write-fault':
      await mapped(s).store(0, pattern(0, 4, 9));
      return;
    case 'writeback':
      await f.fsync();
      return;
    case 'invalidate':
      await f.punchHole(0, P);
      return;
    case 'host-reclaim':
      await lab.fs.serialize(async () => {
        const e = page0(s);
        if (e?.kind !== 'page' || !trylock_page(e)) return;
        if (!(await shrink_page(e as Page, 'reclaim'))) unlock_page(e);
      });
      return;
    case 'device-evict':
    case 'device-evict-host-full':
      await lab.fs.serialize(async () => {
        const { frame } = lab.policy.devicePage(f.mapping, 0);
        if (frame !== null) await lab.dm.evictFrames([frame]);
      });
      return;
    case 'unmount':
      await lab.fs.remount();
      s.f = await lab.fs.open(NAME);
      s.vma = null;
      return;
  }
}

const state = (s: Setup): string => {
  const r = s.lab.fs.snapshot(NAME, 0, 0)[0];
  return `${r.host}/${r.dev}/${r.cpu}`;
};
const letters = (st: PageState) => `${st.host}/${st.dev}/${st.cpu}`;

/** The counters that must move when the row lists `w` (null: seen in the state, not a counter). */
function evidence(w: Work, d: Record<string, number>): number | null {
  switch (w) {
    case 'readpage':
      return d.pgpgin;
    case 'page_mkwrite':
      return d.device_mkwrite;
    case 'page_mkclean':
      return d.pgmkclean;
    case 'try_to_unmap':
      return d.pgunmap;
    case 'copy-to-device':
      return d.device_copies_to_device;
    case 'device-protect':
      return d.device_write_protects;
    case 'copy-back': // device_copybacks counts the copies bounced to the disk too
      return d.device_copybacks - d.device_bounce_writebacks + d.device_copybacks_spared;
    case 'bounce-read':
      return d.device_bounce_reads ?? 0;
    case 'bounce-write':
      return d.device_bounce_writes ?? 0;
    case 'bounce-writeback':
      return d.device_bounce_writebacks;
    case 'writepage':
      return d.nr_written - d.device_bounce_writebacks;
    case 'device-revoke':
      return d.device_revocations;
    case 'device-entry':
      return d.workingset_device_entry + (d.device_migrations_to_device ?? 0);
    case 'alloc-page':
    case 'drop-page':
      return null;
  }
}

const SCHEMES: [DevicePolicyName, SchemeTable][] = [
  ['mirror', MIRROR_TABLE],
  ['migrate', MIGRATE_TABLE],
];

let gpu: GpuDevice;
beforeAll(async () => {
  gpu = await openGpu();
});
afterAll(() => {
  if (!gpu.lost) gpu.destroy();
});

describe.each(SCHEMES)('the %s table is what its paths do', (policy, table) => {
  const reachable = table.allLegalStates().filter((s) => RECIPES[letters(s)]);
  const cases = reachable.flatMap((s) => table.events.map((event) => [letters(s), event, s] as const));

  it('reaches every legal state but those no op can make', () => {
    const unreachable = table
      .allLegalStates()
      .map(letters)
      .filter((l) => !RECIPES[l]);
    expect(unreachable).toEqual(['-/-/ro', '-/-/rw', 'C/-/rw']);
  });

  it.each(cases)('from %s, %s: the next state and the work of its row', async (_l, event, from) => {
    const t = table.transition(from, event);
    const recipe = RECIPES[letters(from)];
    const lab = await mountDevice(gpu, { policy, pageSize: P, hostPages: 4, devicePages: 4 });
    try {
      const s: Setup = { lab, f: await lab.fs.open(NAME, { create: true }), vma: null };
      await recipe.build(s);
      expect(state(s), `recipe for ${fmt(from)}`).toBe(letters(from));
      if (event === 'device-evict-host-full' && from.host === 'E') {
        // No free host page: another file's dirty pages fill the pool (eviction does not reclaim).
        const g = await lab.fs.open('fill', { create: true });
        await g.write(0, pattern(0, lab.fs.hostPages * P, 4));
      }
      const before = lab.fs.vmstat();
      await drive(s, event);
      const d = delta(before, lab.fs.vmstat());
      const where = `${fmt(from)} --${event}--> ${fmt(t.next)} [${t.work.join(', ')}]`;
      expect(state(s), where).toBe(letters(t.next));
      for (const w of WORK_ORDER) {
        const seen = evidence(w, d);
        if (seen === null) continue;
        const listed = t.work.includes(w);
        // Work the row lists only when there is something to do: nothing to clean, copy or write.
        const optional =
          (w === 'page_mkclean' && from.cpu !== 'rw') ||
          (w === 'device-protect' && t.work.includes('device-revoke')) || // a revoke is a protect too
          (w === 'try_to_unmap' && event === 'unmount') ||
          (w === 'bounce-writeback' && !recipe.newer) ||
          (w === 'copy-back' && from.host !== 'E' && !recipe.newer) ||
          (w === 'writepage' && from.host !== 'D' && from.host !== 'S');
        if (listed && !optional) expect(seen, `${where}: ${w} was not done`).toBeGreaterThan(0);
        if (!listed) expect(seen, `${where}: ${w} was done, the row does not list it`).toBe(0);
      }
      await checkInvariants(lab.fs);
    } finally {
      await lab.cleanup();
    }
  });
});
