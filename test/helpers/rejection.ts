/** The HmmlabError a promise rejects with; fails the test when it resolves or throws anything else. */
import { expect } from 'vitest';
import { HmmlabError } from '../../src/errors.ts';

export async function rejection(p: Promise<unknown>): Promise<HmmlabError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(HmmlabError);
    return e as HmmlabError;
  }
  throw new Error('expected a rejection');
}
