import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    reporters: ['default', './test/summaryReporter.ts'],
    // Dawn is a native addon: forks isolate a crash to one file (docs/webgpu-findings.md).
    pool: 'forks',
    // Two cores: more than two GPU-heavy files at once only slows each down on lavapipe.
    maxWorkers: 2,
    testTimeout: 120_000,
    hookTimeout: 60_000,
    // HMMLAB_LOCKDEP: the lock-order validator (src/lock/lockdep.ts) checks every lock in tests.
    env: { XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp', HMMLAB_LOCKDEP: '1' },
    benchmark: { include: ['bench/**/*.bench.ts'] },
  },
});
