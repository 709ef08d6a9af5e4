/**
 * The hmmlab command line. Each subcommand lives in its own module under src/cli/ and registers
 * itself here. Every failure ends in one line on stderr, `hmmlab: CODE: message`, and the exit
 * status of src/cli/exit.ts's table: a usage error of commander's (an unknown option) is EUSAGE
 * with a hint, not the whole help; an exception that is not a HmmlabError is EINTERNAL, its stack
 * shown only under HMMLAB_DEBUG=1.
 */
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { registerBench } from './bench.ts';
import { registerCompare } from './compare.ts';
import { registerDemo } from './demo.ts';
import { EXIT, exitCodeFor, exitStatusHelp, formatError, oneLine } from './exit.ts';
import { registerGenerate } from './generate.ts';
import { registerInfo } from './info.ts';
import { registerReplay } from './replay.ts';
import { registerStress } from './stress.ts';

/** The package's version (package.json), for `hmmlab --version`. */
export function hmmlabVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

export function buildProgram(): Command {
  const program = new Command('hmmlab')
    .description(
      'a lab where real GPU memory plays un-addressable device memory for page-cache pages of real files',
    )
    .version(`hmmlab ${hmmlabVersion()}`, '-V, --version', 'print the version and exit')
    .option('--adapter <name>', 'WebGPU adapter to use (substring of its name; env HMMLAB_ADAPTER)')
    .option('--backend <name>', 'Dawn backend: vulkan, metal, d3d12, opengl, ... (env HMMLAB_BACKEND)')
    // Usage errors are printed by main() as one line; commander's own text would be two or more.
    .configureOutput({ outputError: () => {} })
    .exitOverride();
  registerInfo(program);
  registerBench(program);
  registerCompare(program);
  registerDemo(program);
  registerReplay(program);
  registerStress(program);
  registerGenerate(program);
  program.addHelpText('after', `\n${exitStatusHelp()}\nHMMLAB_DEBUG=1 prints the stack of an EINTERNAL.`);
  return program;
}

/** The subcommand path that argv names ("replay", "bench copy"), for the hint of a usage error. */
export function commandPath(program: Command, argv: readonly string[]): string[] {
  const path: string[] = [];
  let cmd = program;
  for (const word of argv) {
    if (word.startsWith('-')) continue;
    const sub = cmd.commands.find((c) => c.name() === word || c.aliases().includes(word));
    if (!sub) {
      if (cmd.commands.length === 0) break;
      continue; // the value of a global option (--adapter NAME)
    }
    path.push(sub.name());
    cmd = sub;
  }
  return path;
}

/** commander's "error: unknown option '--jsn'\n(Did you mean --json?)" as one line, with a hint. */
export function usageMessage(e: CommanderError, path: readonly string[]): string {
  const text = oneLine(e.message.replace(/^error: /, '').replace(/\(Did you mean/, '(did you mean'));
  const help = ['hmmlab', ...path, '--help'].join(' ');
  return `${text.replace(/;\s*\(/, ' (')}; see '${help}'`;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      // --help and --version end here too, with status 0 and their text already printed.
      if (e.exitCode === 0) {
        process.exitCode = EXIT.ok;
        return;
      }
      // `hmmlab` alone (or `hmmlab bench`): commander printed the help to stderr; that is usage.
      if (e.code !== 'commander.help') {
        process.stderr.write(`hmmlab: EUSAGE: ${usageMessage(e, commandPath(program, argv.slice(2)))}\n`);
      }
      process.exitCode = EXIT.usage;
      return;
    }
    process.stderr.write(formatError(e));
    process.exitCode = exitCodeFor(e);
  }
}
