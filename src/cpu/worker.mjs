// A CPU worker thread's entry: Node 20 cannot start a worker on a .ts file (docs/webgpu-findings.md),
// so register tsx's ESM loader in this thread, as bin/hmmlab.mjs does in the main one, then run the
// TypeScript worker. Works under vitest and under bin/hmmlab.mjs alike, with no build step.
import { register } from 'tsx/esm/api';

register();
await import('./worker.ts');
