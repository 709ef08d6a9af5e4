/**
 * The page-state table (like test_hmm's SNAPSHOT), one row a page: host state in docs/DESIGN.md's
 * letters, page flags, mapcount, CPU permission, device permission, frame and the device's DIRTY bit.
 */
import type { FsPageSnapshot } from '../fs/hmmfs.ts';

export function formatSnapshotTable(rows: readonly FsPageSnapshot[]): string {
  const head = 'page   host flags  map cpu dev  frame dirty';
  const body = rows.map(
    (r) =>
      `${String(r.index).padEnd(6)} ${r.host.padEnd(4)} ${(r.flags || '-').padEnd(6)} ${String(r.mapcount).padStart(3)} ` +
      `${r.cpu.padEnd(3)} ${r.dev.padEnd(3)} ${(r.frame === null ? '-' : String(r.frame)).padStart(6)} ${r.devDirty ? 'yes' : 'no'}`,
  );
  return [head, ...body].join('\n');
}
