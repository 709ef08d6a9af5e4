/**
 * A page-state snapshot of a range (like test_hmm's SNAPSHOT): each page's host state in docs/DESIGN.md's
 * letters, its flags, mapcount and widest CPU permission. The device half adds its own columns.
 */
import { asMapping } from './mapping.ts';
import { flagLetters, PageDirty, PageUptodate } from './page.ts';
import { page_cpu_access } from './rmap.ts';
import type { AddressSpace, HostState, Page, PageSnapshot } from './types.ts';

export function host_state(page: Page | undefined): HostState {
  if (!page) return '-';
  if (PageUptodate(page)) return PageDirty(page) ? 'D' : 'C';
  return PageDirty(page) ? 'S' : '-';
}

export function page_snapshot(mapping: AddressSpace, first: number, last: number): PageSnapshot[] {
  const m = asMapping(mapping);
  const rows: PageSnapshot[] = [];
  for (let i = first; i <= last; i++) {
    const e = m.i_pages.get(i);
    if (e && e.kind === 'device') {
      rows.push({ index: i, host: 'E', flags: '', mapcount: 0, cpu: '-' });
    } else if (e) {
      rows.push({
        index: i,
        host: host_state(e),
        flags: flagLetters(e),
        mapcount: e.mapcount,
        cpu: page_cpu_access(e),
      });
    } else {
      rows.push({ index: i, host: '-', flags: '', mapcount: 0, cpu: '-' });
    }
  }
  return rows;
}

/** One line per page: `index host flags mapcount cpu`. */
export function formatSnapshot(rows: PageSnapshot[]): string {
  return rows.map((r) => `${r.index} ${r.host} ${r.flags || '-'} ${r.mapcount} ${r.cpu}`).join('\n');
}
