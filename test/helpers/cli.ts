/**
 * `hmmlab` as a user runs it: a child process of bin/hmmlab.mjs, with its exit status, stdout and
 * stderr. Shared by the CLI tests of every area, so that each runs the command the same way.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const BIN = fileURLToPath(new URL('../../bin/hmmlab.mjs', import.meta.url));
const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Written to the child's stdin (then closed). */
  input?: string;
  timeoutMs?: number;
  /** Variables added to the child's environment (the planted bugs' switch). */
  env?: Record<string, string>;
}

/** Run `hmmlab ...args` on the default adapter (HMMLAB_ADAPTER and HMMLAB_BACKEND cleared). */
export function hmmlab(args: readonly string[], options: RunOptions = {}): Promise<Run> {
  return new Promise((resolve) => {
    const env = { ...process.env, HMMLAB_ADAPTER: '', HMMLAB_BACKEND: '', ...options.env };
    const child = execFile(
      process.execPath,
      [BIN, ...args],
      { cwd: ROOT, env, timeout: options.timeoutMs ?? 90_000, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
    child.stdin?.end(options.input ?? '');
  });
}

/**
 * Dawn's two limit-clamp warnings at adapter request on lavapipe, and Mesa's XDG_RUNTIME_DIR line:
 * printed by native code, not to be quieted from Node (docs/webgpu-findings.md).
 */
export const NATIVE_NOISE =
  /^Warning: maxDynamic(Uniform|Storage)BuffersPerPipelineLayout artificially reduced from \d+ to \d+ to fit dynamic offset allocation limit\.$|XDG_RUNTIME_DIR/;

/** stderr without the lines Dawn and Mesa always print (exactly those: any other warning stays). */
export function ourStderr(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.trim() !== '' && !NATIVE_NOISE.test(l));
}
