/**
 * The hmmlab command line. Each subcommand lives in its own module under src/cli/ and registers
 * itself here. User errors (HmmlabError) print one line and exit non-zero; anything else is a bug
 * and keeps its stack.
 */
import { Command, CommanderError } from 'commander';
import { isHmmlabError } from '../errors.ts';
import { registerBench } from './bench.ts';
import { registerCompare } from './compare.ts';
import { registerDemo } from './demo.ts';
import { registerInfo } from './info.ts';
import { registerReplay } from './replay.ts';
import { registerStress } from './stress.ts';

export function buildProgram(): Command {
  const program = new Command('hmmlab')
    .description(
      'a lab where real GPU memory plays un-addressable device memory for page-cache pages of real files',
    )
    .option('--adapter <name>', 'WebGPU adapter to use (substring of its name; env HMMLAB_ADAPTER)')
    .option('--backend <name>', 'Dawn backend: vulkan, metal, d3d12, opengl, ... (env HMMLAB_BACKEND)')
    .showHelpAfterError()
    .exitOverride();
  registerInfo(program);
  registerBench(program);
  registerCompare(program);
  registerDemo(program);
  registerReplay(program);
  registerStress(program);
  return program;
}

/** Exit status per error code: a malformed op log is 2 (docs/oplog.md); other user errors 1. */
export function exitCodeFor(code: string): number {
  return code === 'EOPLOG' || code === 'EINVAL' ? 2 : 1;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      process.exitCode = e.exitCode;
      return;
    }
    if (isHmmlabError(e)) {
      process.stderr.write(`hmmlab: ${e.code}: ${e.message}\n`);
      process.exitCode = exitCodeFor(e.code);
      return;
    }
    throw e;
  }
}
