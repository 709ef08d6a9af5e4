/**
 * WGSL loading from shaders/, with a tiny include directive so every kernel shares one device-MMU
 * body (`//!include mmu.wgsl` on a line of its own) and a conditional one for what an adapter may
 * lack (`//!if subgroups` ... `//!else` ... `//!endif`, each on a line of its own: the lines kept
 * are those of the features the shader is loaded with; a `subgroups` shader is compiled with
 * `enable subgroups;`). Compile errors are reported with the file and line they come from, not the
 * line in the concatenated source.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { HmmlabError } from '../errors.ts';
import type { GpuDevice } from './device.ts';

export const SHADER_DIR = fileURLToPath(new URL('../../shaders/', import.meta.url));

export interface ShaderSource {
  code: string;
  /** For each line of `code` (0-based), the file and 1-based line it came from. */
  lineMap: { file: string; line: number }[];
}

const INCLUDE = /^\s*\/\/!include\s+(\S+)\s*$/;
const IF = /^\s*\/\/!if\s+(\S+)\s*$/;
const ELSE = /^\s*\/\/!else\s*$/;
const ENDIF = /^\s*\/\/!endif\s*$/;

/** Resolve includes (each file once) and conditionals (on `features`), and build the line map. */
export function preprocess(
  name: string,
  read: (file: string) => string = (f) => readFileSync(SHADER_DIR + f, 'utf8'),
  features: ReadonlySet<string> = new Set(),
): ShaderSource {
  const out: string[] = [];
  const lineMap: ShaderSource['lineMap'] = [];
  const seen = new Set<string>();
  const visit = (file: string, from?: string) => {
    if (seen.has(file)) return;
    seen.add(file);
    let text: string;
    try {
      text = read(file);
    } catch {
      throw new HmmlabError('ESHADER', `shader ${file} not found${from ? ` (included from ${from})` : ''}`);
    }
    // A stack of (condition holds, in its else branch) for the open //!if blocks.
    const conds: { on: boolean; inElse: boolean }[] = [];
    const active = () => conds.every((c) => (c.inElse ? !c.on : c.on));
    text.split('\n').forEach((lineText, i) => {
      const where = `${file}:${i + 1}`;
      const cond = IF.exec(lineText);
      if (cond) {
        conds.push({ on: features.has(cond[1]), inElse: false });
        return;
      }
      if (ELSE.test(lineText) || ENDIF.test(lineText)) {
        const top = conds[conds.length - 1];
        if (!top || (ELSE.test(lineText) && top.inElse))
          throw new HmmlabError('ESHADER', `${where}: ${lineText.trim()} without its //!if`);
        if (ELSE.test(lineText)) top.inElse = true;
        else conds.pop();
        return;
      }
      if (!active()) return;
      const m = INCLUDE.exec(lineText);
      if (m) {
        visit(m[1], where);
        return;
      }
      out.push(lineText);
      lineMap.push({ file, line: i + 1 });
    });
    if (conds.length) throw new HmmlabError('ESHADER', `${file}: an //!if without its //!endif`);
  };
  visit(name);
  return { code: out.join('\n'), lineMap };
}

/** Compile WGSL; throw ESHADER naming file:line:column and the message of each error. */
export async function compileShader(
  gpu: GpuDevice,
  label: string,
  src: ShaderSource,
): Promise<GPUShaderModule> {
  const module = await gpu.scoped(`compile ${label}`, async () => {
    gpu.device.pushErrorScope('validation');
    const m = gpu.device.createShaderModule({ label, code: src.code });
    const info = await m.getCompilationInfo();
    await gpu.device.popErrorScope(); // the messages below say it better
    const errors = info.messages.filter((msg) => msg.type === 'error');
    if (errors.length) {
      const lines = errors.map((msg) => {
        const at = src.lineMap[msg.lineNum - 1];
        const where = at ? `${at.file}:${at.line}:${msg.linePos}` : `${label}:${msg.lineNum}:${msg.linePos}`;
        return `${where}: ${msg.message}`;
      });
      throw new HmmlabError('ESHADER', `WGSL compile error in ${label}:\n${lines.join('\n')}`);
    }
    return m;
  });
  return module;
}

const cache = new WeakMap<GpuDevice, Map<string, GPUShaderModule>>();

/** Load shaders/NAME (with includes) and compile it once per device. */
export async function loadShader(
  gpu: GpuDevice,
  name: string,
  defines: Record<string, number> = {},
  features: readonly string[] = [],
): Promise<GPUShaderModule> {
  let perDevice = cache.get(gpu);
  if (!perDevice) {
    perDevice = new Map();
    cache.set(gpu, perDevice);
  }
  const key = `${name}|${JSON.stringify(defines)}|${features.join(',')}`;
  let m = perDevice.get(key);
  if (!m) {
    const src = preprocess(name, undefined, new Set(features));
    // Directives first (`enable` must open the module), then `override`-free constants:
    // `const NAME: u32 = value;` lines (mapped to the file's line 0).
    const directives = features.includes('subgroups')
      ? ['enable subgroups;', 'diagnostic(off, subgroup_uniformity);']
      : [];
    const consts = [...directives, ...Object.entries(defines).map(([k, v]) => `const ${k}: u32 = ${v}u;`)];
    const withDefs: ShaderSource = {
      code: [...consts, src.code].join('\n'),
      lineMap: [...consts.map(() => ({ file: `${name} (defines)`, line: 0 })), ...src.lineMap],
    };
    m = await compileShader(gpu, name, withDefs);
    perDevice.set(key, m);
  }
  return m;
}
