import type { Command } from 'commander';
import { GpuDevice } from '../gpu/device.ts';
import { RAISED_LIMITS } from '../gpu/adapter.ts';

/** The global --adapter/--backend options, for any subcommand. */
export function gpuOptionsOf(cmd: Command): { adapter?: string; backend?: string } {
  const o = cmd.optsWithGlobals() as { adapter?: string; backend?: string };
  return { adapter: o.adapter, backend: o.backend };
}

export const INFO_LIMITS = [...RAISED_LIMITS, 'maxStorageBufferBindingSize', 'maxBindGroups', 'minStorageBufferOffsetAlignment'];

export function registerInfo(program: Command): void {
  program
    .command('info')
    .description('describe the WebGPU adapter hmmlab uses: vendor, architecture, device, backend, limits')
    .option('--json', 'print one JSON object')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const gpu = await GpuDevice.open(gpuOptionsOf(cmd));
      try {
        const limits: Record<string, number> = {};
        for (const name of new Set(INFO_LIMITS)) {
          limits[name] = (gpu.limits as unknown as Record<string, number>)[name];
        }
        const report = { ...gpu.info, limits };
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(report)}\n`);
        } else {
          const rows: [string, string][] = [
            ['vendor', report.vendor],
            ['architecture', report.architecture],
            ['device', report.device],
            ['description', report.description],
            ['backend', report.backend],
            ['software adapter', report.software ? 'yes' : 'no'],
            ...Object.entries(limits).map(([k, v]) => [k, String(v)] as [string, string]),
          ];
          const w = Math.max(...rows.map(([k]) => k.length));
          for (const [k, v] of rows) process.stdout.write(`${k.padEnd(w)}  ${v}\n`);
        }
      } finally {
        gpu.destroy();
      }
    });
}
