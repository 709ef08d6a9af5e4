/**
 * The options of a generated workload, shared by `hmmlab generate` and `hmmlab stress`: the seed,
 * the file-size bound, and the op mix: fsx-style switches that leave kinds of op out (fsx's -R, -W,
 * -Z ...). `--no-device` is each command's own (stress ties it to the policy).
 */
import { randomInt } from 'node:crypto';
import type { Command } from 'commander';
import { parseCount, parseMaxFileSize as parseFileSizeLimit } from '../bench/units.ts';
import { HmmlabError } from '../errors.ts';
import { SEED_LIMIT } from '../oplog/generate.ts';
import type { OpName } from '../oplog/schema.ts';

/** A generated file stays within this many pages unless --max-file-size says otherwise. */
export const DEFAULT_FILE_PAGES = 32;

/** --seed: 0..2^31-1 (what the generator takes whole); random when not given. */
export function parseSeed(text: string | undefined): number {
  const seed = text === undefined ? randomInt(0, SEED_LIMIT) : parseCount('--seed', text, 0, 0);
  if (seed >= SEED_LIMIT) {
    throw new HmmlabError('EINVAL', `bad --seed "${text}": expected an integer from 0 to ${SEED_LIMIT - 1}`);
  }
  return seed;
}

/**
 * --max-file-size of a generated workload: at least 512 bytes, at most the largest file-size limit
 * a mount takes (8 TiB; the mount's limit is raised to it where it is past the 1 GiB default).
 */
export function parseMaxFileSize(text: string | undefined, pageSize: number): number {
  return parseFileSizeLimit(text, DEFAULT_FILE_PAGES * pageSize, 512);
}

/** Each switch `--no-NAME` and the ops it leaves out. */
export const OP_MIX_SWITCHES: readonly { name: string; ops: readonly OpName[]; what: string }[] = [
  { name: 'mapread', ops: ['mapread'], what: 'loads through a CPU mapping (mapread)' },
  { name: 'mapwrite', ops: ['mapwrite'], what: 'stores through a CPU mapping (mapwrite)' },
  { name: 'dio', ops: ['dioread', 'diowrite'], what: 'O_DIRECT reads and writes (dioread, diowrite)' },
  { name: 'punch', ops: ['punch'], what: 'hole punches (punch)' },
  { name: 'truncate', ops: ['truncate'], what: 'truncates (truncate)' },
];

/** Add the --no-NAME switches to `cmd`. */
export function addOpMixOptions(cmd: Command): Command {
  for (const s of OP_MIX_SWITCHES) cmd.option(`--no-${s.name}`, `generate no ${s.what}`);
  return cmd;
}

/** The weights the switches give (0 for each op left out), and the switches' names that were used. */
export function opMixOf(opts: Record<string, unknown>): {
  weights: Partial<Record<OpName, number>>;
  without: string[];
} {
  const weights: Partial<Record<OpName, number>> = {};
  const without: string[] = [];
  for (const s of OP_MIX_SWITCHES) {
    if (opts[s.name] !== false) continue;
    without.push(s.name);
    for (const op of s.ops) weights[op] = 0;
  }
  return { weights, without };
}
