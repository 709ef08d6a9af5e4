// Exit 0 when Dawn finds a WebGPU adapter on this machine, 1 otherwise.
// Used by scripts/setup.sh to decide whether the software GPU must be installed.
import { create } from 'webgpu';

const gpu = create([]);
const timer = setTimeout(() => {
  console.error('probe: requestAdapter timed out');
  process.exit(1);
}, 20_000);
try {
  const adapter = await gpu.requestAdapter();
  clearTimeout(timer);
  if (!adapter) process.exit(1);
  const device = await adapter.requestDevice();
  const info = adapter.info;
  console.log(`adapter: ${info.vendor} ${info.description || info.device} (${info.architecture})`);
  device.destroy();
  // Keep gpu reachable until here (docs/webgpu-findings.md: a collected instance crashes Dawn).
  if (gpu) process.exit(0);
} catch (e) {
  console.error(`probe: ${e instanceof Error ? e.message : e}`);
  process.exit(1);
}
