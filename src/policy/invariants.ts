/**
 * DESIGN.md's invariants, checked over every page of every open file of a mount (tests and
 * `hmmlab replay --check` run it after every op):
 *   1. single writer: device rw => no CPU PTE and A not uptodate; a writable CPU PTE => no device
 *      access;
 *   - every page is in a legal state of the mirror table (isLegal);
 *   - a device entry => the device holds a frame for it;
 *   - with the mirror policy, the device page table on the GPU says what the policy believes
 *     (frame and permission of each page), read back from the GPU itself.
 * No stale read, no lost data and durability are the reference model's to check (replay --check).
 * A broken invariant is HmmlabError('EIO') naming the file, the page and the invariant.
 */
import { HmmlabError } from '../errors.ts';
import type { HmmFs } from '../fs/hmmfs.ts';
import type { Mapping } from '../mm/mapping.ts';
import { page_cpu_access } from '../mm/rmap.ts';
import { host_state } from '../mm/snapshot.ts';
import { PG_uptodate } from '../mm/types.ts';
import { isDevicePolicy } from './device.ts';
import { MirrorPolicy } from './mirror.ts';
import { fmt, isLegal, type PageState } from './mirrorTable.ts';

function broken(m: Mapping, index: number, what: string): HmmlabError {
  return new HmmlabError('EIO', `invariant broken: ${m.name} page ${index}: ${what}`);
}

export async function checkInvariants(fs: HmmFs): Promise<void> {
  const policy = fs.policy;
  for (const m of fs.openMappings) {
    const devIndices = isDevicePolicy(policy) ? policy.deviceIndices(m) : [];
    const indices = new Set<number>([...m.i_pages.keys(), ...devIndices]);
    for (const index of [...indices].sort((a, b) => a - b)) {
      const e = m.i_pages.get(index);
      const dev = isDevicePolicy(policy) ? policy.devicePage(m, index) : { dev: '-' as const, frame: null };
      const page = e?.kind === 'page' ? e : null;
      const cpu = page ? page_cpu_access(page) : '-';
      const s: PageState = {
        host: e?.kind === 'device' ? 'E' : host_state(page ?? undefined),
        dev: dev.dev,
        cpu,
      };
      if (dev.dev === 'rw' && cpu !== '-')
        throw broken(m, index, `single writer: the device may write it and a CPU PTE maps it ${cpu}`);
      if (dev.dev === 'rw' && page && page.flags & PG_uptodate)
        throw broken(m, index, 'single writer: the device may write it and A is uptodate');
      if (cpu === 'rw' && dev.dev !== '-')
        throw broken(m, index, `single writer: a CPU PTE may write it and the device has ${dev.dev} access`);
      if (e?.kind === 'device' && dev.frame === null)
        throw broken(m, index, 'a device entry stands in the index and the device holds no frame for it');
      if (!isLegal(s)) throw broken(m, index, `illegal state ${fmt(s)}`);
    }
    if (policy instanceof MirrorPolicy && devIndices.length) await checkDeviceTable(policy, m, devIndices);
  }
}

/** The GPU's page table agrees with the policy's records: same frame, same permission. */
async function checkDeviceTable(policy: MirrorPolicy, m: Mapping, indices: number[]): Promise<void> {
  const first = indices[0];
  const last = indices[indices.length - 1];
  const rows = await policy.dm.snapshot(policy.dm.space(m.id), first, last);
  const want = new Set(indices);
  for (const r of rows) {
    const d = policy.devicePage(m, r.index);
    if (!want.has(r.index)) {
      if (r.perm !== 'none')
        throw broken(m, r.index, `the GPU maps it ${r.perm} and the policy holds no copy`);
      continue;
    }
    if (r.perm !== d.dev || r.frame !== d.frame) {
      throw broken(
        m,
        r.index,
        `the GPU page table says ${r.perm} frame ${r.frame}, the policy ${d.dev} frame ${d.frame}`,
      );
    }
    const owner = policy.dm.pool.owner(d.frame!);
    if (!owner || owner.space !== m.id || owner.index !== r.index)
      throw broken(
        m,
        r.index,
        `frame ${d.frame} belongs to ${owner ? `space ${owner.space} page ${owner.index}` : 'no one'}`,
      );
  }
}
