import type { Command } from 'commander';
import { type AdapterInfo, RAISED_LIMITS } from '../gpu/adapter.ts';
import { GpuDevice } from '../gpu/device.ts';

/** The global --adapter/--backend options, for any subcommand. */
export function gpuOptionsOf(cmd: Command): { adapter?: string; backend?: string } {
  const o = cmd.optsWithGlobals() as { adapter?: string; backend?: string };
  return { adapter: o.adapter, backend: o.backend };
}

export const INFO_LIMITS = [
  ...RAISED_LIMITS,
  'maxStorageBufferBindingSize',
  'maxBindGroups',
  'minStorageBufferOffsetAlignment',
];

export interface AdapterReport extends AdapterInfo {
  limits: Record<string, number>;
}

/** What `hmmlab info` reports about an open device. */
export function adapterReport(gpu: GpuDevice): AdapterReport {
  const limits: Record<string, number> = {};
  for (const name of new Set(INFO_LIMITS)) {
    limits[name] = (gpu.limits as unknown as Record<string, number>)[name];
  }
  return { ...gpu.info, limits };
}

/** The report as aligned "name  value" lines. */
export function formatAdapterReport(report: AdapterReport): string {
  const rows: [string, string][] = [
    ['vendor', report.vendor],
    ['architecture', report.architecture],
    ['device', report.device],
    ['description', report.description],
    ['backend', report.backend],
    ['software adapter', report.software ? 'yes' : 'no'],
    ...Object.entries(report.limits).map(([k, v]) => [k, String(v)] as [string, string]),
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${v}\n`).join('');
}

/** Open the adapter the global flags name, run `f` on it, and destroy the device however `f` ends. */
export async function withGpu<T>(cmd: Command, f: (gpu: GpuDevice) => Promise<T>): Promise<T> {
  const gpu = await GpuDevice.open(gpuOptionsOf(cmd));
  try {
    return await f(gpu);
  } finally {
    gpu.destroy();
  }
}

/** The adapter as tables and chart titles name it. */
export function adapterName(gpu: GpuDevice): string {
  return gpu.info.description || gpu.info.device;
}

export function registerInfo(program: Command): void {
  program
    .command('info')
    .description('describe the WebGPU adapter hmmlab uses: vendor, architecture, device, backend, limits')
    .option('--json', 'print one JSON object')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      await withGpu(cmd, async (gpu) => {
        const report = adapterReport(gpu);
        process.stdout.write(opts.json ? `${JSON.stringify(report)}\n` : formatAdapterReport(report));
      });
    });
}
