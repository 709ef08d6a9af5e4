/**
 * The one lock order is written in docs/ARCHITECTURE.md ("Lock order (phase 2)") and in
 * src/lock/order.ts (LOCK_ORDER, which lockdep enforces): the two lists must name the same classes
 * in the same order. And the default lockdep is on under the tests (vitest.config.ts).
 */
import fs from 'node:fs';
import { expect, it } from 'vitest';
import { lockdep } from '../../src/lock/lockdep.ts';
import { LOCK_ORDER } from '../../src/lock/order.ts';

it('docs/ARCHITECTURE.md and LOCK_ORDER list the same lock classes in the same order', () => {
  const doc = fs.readFileSync(new URL('../../docs/ARCHITECTURE.md', import.meta.url), 'utf8');
  const section = doc.split('### Lock order (phase 2)')[1]?.split(/\n#{2,3} /)[0] ?? '';
  const listed = [...section.matchAll(/^\d+\. `([^`]+)`/gm)].map((m) => m[1]);
  expect(listed.length).toBeGreaterThan(0);
  expect(listed).toEqual(LOCK_ORDER.map((c) => c.name));
});

it('lockdep is on in the tests', () => {
  expect(lockdep.enabled).toBe(true);
});
