/**
 * Planted bugs, for the tests that show the checks catch them (test/stress/planted.test.ts): each
 * takes out one call the engine's correctness rests on, in one place. Set by an environment
 * variable that the CLI does not document, read once per process:
 *
 *   HMMLAB_PLANTED_BUG=no-revoke     the device revoke of a CPU fault is never sent to the GPU:
 *                                    the policy forgets its copy, the device keeps its PTE
 *   HMMLAB_PLANTED_BUG=no-shootdown  reclaim does not wait for the CPU TLB shootdown after it
 *                                    unmapped a page: a CPU thread may still be inside an access
 *                                    to the page it frees
 *   HMMLAB_PLANTED_BUG=no-mkwrite    a CPU write fault maps the page writable without page_mkwrite:
 *                                    no block, and the page is not dirtied
 *
 * Never set outside those tests: every one of them loses data.
 */
export const PLANTED_BUGS = ['no-revoke', 'no-shootdown', 'no-mkwrite'] as const;
export type PlantedBug = (typeof PLANTED_BUGS)[number];

const ENV = 'HMMLAB_PLANTED_BUG';

function parse(v: string | undefined): PlantedBug | null {
  if (!v) return null;
  if (!(PLANTED_BUGS as readonly string[]).includes(v))
    throw new Error(`${ENV}=${v}: not a planted bug (${PLANTED_BUGS.join(', ')})`);
  return v as PlantedBug;
}

const active = parse(process.env[ENV]);

/** Whether planted bug `bug` is on in this process. */
export function planted(bug: PlantedBug): boolean {
  return active === bug;
}

/** The planted bug on in this process, if any (reports name it, so a failure is not mistaken). */
export function plantedBug(): PlantedBug | null {
  return active;
}

export const PLANTED_ENV = ENV;
