/**
 * The page LRU (mm/vmscan.c's lruvec list, one list here): pages oldest first, a doubly linked
 * list, so that taking the oldest and moving a page to the tail cost the same however long reclaim
 * has run. (A Set kept in insertion order did the same, but one scanned from its start after many
 * deletes there walks every deleted slot: reclaim then cost a walk of the budget a page.)
 */
import type { Page } from './types.ts';

interface Node {
  page: Page;
  prev: Node | null;
  next: Node | null;
}

export class PageLru implements Iterable<Page> {
  private readonly nodes = new Map<Page, Node>();
  private head: Node | null = null;
  private tail: Node | null = null;

  get size(): number {
    return this.nodes.size;
  }

  has(page: Page): boolean {
    return this.nodes.has(page);
  }

  /** Put a page at the tail (most recently used); a page already on the list stays where it is. */
  add(page: Page): this {
    if (this.nodes.has(page)) return this;
    const n: Node = { page, prev: this.tail, next: null };
    if (this.tail) this.tail.next = n;
    else this.head = n;
    this.tail = n;
    this.nodes.set(page, n);
    return this;
  }

  delete(page: Page): boolean {
    const n = this.nodes.get(page);
    if (!n) return false;
    if (n.prev) n.prev.next = n.next;
    else this.head = n.next;
    if (n.next) n.next.prev = n.prev;
    else this.tail = n.prev;
    this.nodes.delete(page);
    return true;
  }

  /** The oldest page. */
  first(): Page | undefined {
    return this.head?.page;
  }

  *[Symbol.iterator](): Iterator<Page> {
    for (let n = this.head; n; n = n.next) yield n.page;
  }
}
