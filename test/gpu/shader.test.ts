/**
 * WGSL compile errors are reported with the file and line they come from, through includes.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HmmlabError } from '../../src/errors.ts';
import { GpuDevice } from '../../src/gpu/device.ts';
import { compileShader, preprocess } from '../../src/gpu/shader.ts';

let gpu: GpuDevice;
let dir: string;
beforeAll(async () => {
  gpu = await GpuDevice.open();
  dir = mkdtempSync(join(tmpdir(), 'hmmlab-shader-'));
  writeFileSync(
    join(dir, 'lib.wgsl'),
    ['// a shared body', 'fn twice(x: u32) -> u32 {', '  return x * 2u;', '}', ''].join('\n'),
  );
  writeFileSync(
    join(dir, 'bad-lib.wgsl'),
    ['// line 1', 'fn broken(x: u32) -> u32 {', '  return x + undefined_name;', '}', ''].join('\n'),
  );
  writeFileSync(
    join(dir, 'good.wgsl'),
    [
      '//!include lib.wgsl',
      '@group(0) @binding(0) var<storage, read_write> out: array<u32>;',
      '@compute @workgroup_size(1) fn main() { out[0] = twice(21u); }',
      '',
    ].join('\n'),
  );
  writeFileSync(
    join(dir, 'bad-main.wgsl'),
    ['//!include lib.wgsl', '', '', '', 'fn main() -> u32 { let y: u32 = 1.5f; return y; }', ''].join('\n'),
  );
  writeFileSync(join(dir, 'bad-include.wgsl'), ['//!include bad-lib.wgsl', 'fn f() {}', ''].join('\n'));
});
afterAll(() => {
  gpu?.destroy();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const read = (f: string) => readFileSync(join(dir, f), 'utf8');

async function compileError(name: string): Promise<HmmlabError> {
  try {
    await compileShader(gpu, name, preprocess(name, read));
  } catch (e) {
    expect(e).toBeInstanceOf(HmmlabError);
    return e as HmmlabError;
  }
  throw new Error(`${name} compiled`);
}

describe('WGSL loading', () => {
  it('compiles a good shader with an include', async () => {
    const m = await compileShader(gpu, 'good.wgsl', preprocess('good.wgsl', read));
    expect(m).toBeDefined();
  });

  it('reports an error in the main file with its line', async () => {
    const e = await compileError('bad-main.wgsl');
    expect(e.code).toBe('ESHADER');
    expect(e.message).toMatch(/bad-main\.wgsl:5:\d+/);
  });

  it('reports an error in an included file with that file and its line', async () => {
    const e = await compileError('bad-include.wgsl');
    expect(e.code).toBe('ESHADER');
    expect(e.message).toMatch(/bad-lib\.wgsl:3:\d+/);
    expect(e.message).toContain('undefined_name');
  });

  it('a missing include names the file that includes it', () => {
    writeFileSync(join(dir, 'missing.wgsl'), 'fn a() {}\n//!include nowhere.wgsl\n');
    let err: unknown;
    try {
      preprocess('missing.wgsl', read);
    } catch (e) {
      err = e;
    }
    expect((err as HmmlabError).code).toBe('ESHADER');
    expect((err as HmmlabError).message).toContain('nowhere.wgsl');
    expect((err as HmmlabError).message).toContain('missing.wgsl:2');
  });
});
