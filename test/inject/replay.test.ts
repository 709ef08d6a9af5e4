/**
 * The fault-injection contract of `hmmlab replay --inject` and `hmmlab stress --inject-rate`, under
 * each device policy (mirror, migrate): an op that a transient injected fault makes fail is reported
 * and run again, and the run's records (oplog.md's `--json` output) are byte for byte those of the
 * run without the fault, for every transient point at several K on device logs, with the reference
 * model and the invariant checker after every op and every failed attempt. device-lost ends the run
 * (exit 1) and what was fsynced before is on disk.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceMemory } from '../../src/device/index.ts';
import { HmmFs } from '../../src/fs/hmmfs.ts';
import type { GpuDevice } from '../../src/gpu/device.ts';
import { FaultInjector, type InjectPoint, TRANSIENT_POINTS } from '../../src/inject/inject.ts';
import { generateOplog } from '../../src/oplog/generate.ts';
import { parseOplog } from '../../src/oplog/parse.ts';
import { type ReplayRecord, replayOplog } from '../../src/oplog/replay.ts';
import type { Op } from '../../src/oplog/schema.ts';
import { stressRuns } from '../../src/oplog/stress.ts';
import { checkInvariants } from '../../src/policy/invariants.ts';
import { createDevicePolicy } from '../../src/policy/registry.ts';
import { type DevicePolicyName, expectBytes, openGpu, POLICIES, pattern } from '../policy/helpers.ts';

const ROOT = path.join(import.meta.dirname, '..', '..');
const SEED = Number(process.env.HMMLAB_SEED ?? Date.now() % 1_000_000);
console.log(`inject replay: seed ${SEED} (HMMLAB_SEED=${SEED} reruns it)`);

/** The README's device log: write, devwrite, dropcaches, devread, read, fsync. */
const README_LOG = [
  '{"op":"write","off":0,"len":65536,"tag":1}',
  '{"op":"devwrite","off":0,"len":65536,"tag":2}',
  '{"op":"dropcaches"}',
  '{"op":"devread","off":0,"len":8192}',
  '{"op":"read","off":0,"len":16384}',
  '{"op":"fsync"}',
  '{"op":"mapwrite","off":100,"len":5000,"tag":3}',
  '{"op":"devwrite","off":8192,"len":16384,"tag":4}',
  '{"op":"mapread","off":0,"len":30000}',
  '{"op":"truncate","size":50000}',
  '{"op":"dioread","off":0,"len":4096}',
  '{"op":"punch","off":1000,"len":9000}',
  '{"op":"remount"}',
  '{"op":"read","off":0,"len":50000}',
].join('\n');

let gpu: GpuDevice;
let tmp: string;
beforeAll(async () => {
  gpu = await openGpu();
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'hmmlab-inject-'));
});
afterAll(() => {
  gpu?.destroy();
  fs.rmSync(tmp, { recursive: true, force: true });
});

interface Setup {
  policy: DevicePolicyName;
  pageSize: number;
  hostPages: number;
  devicePages: number;
}

/** Replay under the setup's policy, the model and the invariants after every op and failed attempt. */
async function replay(ops: Op[], s: Setup, inject: FaultInjector) {
  const dm = await DeviceMemory.create(gpu, { devicePages: s.devicePages, pageSize: s.pageSize });
  const records: ReplayRecord[] = [];
  let retried = 0;
  try {
    await replayOplog(ops, {
      pageSize: s.pageSize,
      hostPages: s.hostPages,
      policy: createDevicePolicy(s.policy, dm),
      check: true,
      inject,
      retries: 1,
      onRecord: (r) => records.push(r),
      onRetry: () => {
        retried++;
      },
      afterOp: (fs) => checkInvariants(fs),
      afterFailedAttempt: (fs) => checkInvariants(fs),
    });
  } finally {
    dm.destroy();
  }
  return { records, retried };
}

const logs: { name: string; ops: Op[]; setup: Setup }[] = POLICIES.flatMap((policy) => [
  {
    name: `the README device log (${policy})`,
    ops: parseOplog(README_LOG).ops,
    setup: { policy, pageSize: 4096, hostPages: 8, devicePages: 8 },
  },
  {
    name: `a generated device log (seed ${SEED}), 64 KiB pages (${policy})`,
    ops: generateOplog({ seed: SEED, ops: 100, device: true, pageSize: 65536, maxFileSize: 16 * 65536 }),
    setup: { policy, pageSize: 65536, hostPages: 6, devicePages: 5 },
  },
]);

describe.each(logs)('replay --inject on $name', ({ ops, setup }) => {
  let baseline: ReplayRecord[];
  let attempts: Record<InjectPoint, number>;
  beforeAll(async () => {
    const counting = new FaultInjector(); // counts every point's attempts, fails none
    baseline = (await replay(ops, setup, counting)).records;
    attempts = { ...counting.attempts };
  });

  it('the log reaches every transient point that its ops can reach', () => {
    for (const p of [
      'pread',
      'pwrite',
      'copy-to-device',
      'copy-from-device',
      'frame-alloc',
      'kernel-launch',
    ] as const) {
      expect(attempts[p], p).toBeGreaterThan(0);
    }
  });

  it.each(TRANSIENT_POINTS)(
    '%s at the first, a middle and the last attempt: the same records as without it',
    async (point) => {
      const n = attempts[point];
      if (n === 0) return; // this log never reaches it (the other log does)
      for (const k of [...new Set([1, Math.ceil(n / 2), n])]) {
        const inject = new FaultInjector({ specs: [{ point, nth: k }] });
        const { records } = await replay(ops, setup, inject);
        expect(inject.fired[point], `${point}@${k} fired`).toBe(1);
        expect(records, `${point}@${k}`).toEqual(baseline);
      }
    },
  );
});

function hmmlab(args: string[]) {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin/hmmlab.mjs'), ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 120_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

it('a bad --inject is one line naming it, before anything runs', () => {
  const log = path.join(tmp, 'readme.jsonl');
  fs.writeFileSync(log, `${README_LOG}\n`);
  const r = hmmlab(['replay', log, '--inject', 'pwrit@1']);
  expect(r.status).toBe(2);
  expect(r.stdout).toBe('');
  expect(r.stderr.trim().split('\n').at(-1)).toMatch(
    /^hmmlab: EINVAL: bad --inject "pwrit@1": unknown point "pwrit"/,
  );
});

describe.each(POLICIES)('the command line (%s)', (policy) => {
  it('replay --json --inject prints what the run without it prints; the fault and the retry are on stderr', () => {
    const log = path.join(tmp, 'readme.jsonl');
    fs.writeFileSync(log, `${README_LOG}\n`);
    const args = ['replay', log, '--json', '--policy', policy, '--host-pages', '8', '--device-pages', '8'];
    const plain = hmmlab(args);
    expect(plain.status).toBe(0);
    const r = hmmlab([...args, '--inject', 'copy-from-device@1,pwrite@2']);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(plain.stdout);
    expect(r.stderr).toMatch(/^hmmlab: injected copy-from-device#1 at line \d+$/m);
    expect(r.stderr).toMatch(/^hmmlab: injected pwrite#2 at line \d+$/m);
    expect(r.stderr).toMatch(/^hmmlab: ETIMEDOUT: line \d+ \(\w+.*\): .*; running it again$/m);
    expect(r.stderr).toMatch(/^hmmlab: EIO: line \d+ \(\w+.*\): .*pwrite: I\/O error; running it again$/m);
  });

  it('device-lost ends the run with exit 1 naming the lost pages; what was fsynced is on disk', async () => {
    const P = 4096;
    const dir = fs.mkdtempSync(path.join(tmp, 'lost-'));
    const log = path.join(tmp, 'lost.jsonl');
    fs.writeFileSync(
      log,
      [
        '{"op":"write","off":0,"len":32768,"tag":1}',
        '{"op":"fsync"}',
        '{"op":"write","off":0,"len":8192,"tag":2}',
        '{"op":"devwrite","off":16384,"len":16384,"tag":3}',
        '{"op":"read","off":0,"len":4}',
      ].join('\n'),
    );
    const r = hmmlab([
      'replay',
      log,
      '--json',
      '--policy',
      policy,
      '--dir',
      dir,
      '--inject',
      'device-lost@2',
    ]);
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^hmmlab: injected device-lost#2 at line 4$/m);
    expect(r.stderr).toMatch(
      /^hmmlab: EIO: line 4 \(devwrite .*\): device lost: dirty data of pages 4-7 of oplog\.dat lost/m,
    );
    // Remount the directory: the fsynced data, and the host's newer pages 0-1 written back.
    const hfs = await HmmFs.mount({ dir, pageSize: P });
    const f = await hfs.open('oplog.dat');
    const want = pattern(0, 8 * P, 1);
    want.set(pattern(0, 2 * P, 2));
    expectBytes(await f.read(0, 8 * P), want, 'the file after the loss');
    await hfs.unmount();
  });

  it('stress --inject-rate 0.02 passes, every transient point fired, counted by point', () => {
    const r = hmmlab([
      'stress',
      '--policy',
      policy,
      '--inject-rate',
      '0.02',
      // A fixed seed: at this rate a random one may leave a rare point (fdatasync) unfired; the
      // high-rate run below explores random seeds.
      '--seed',
      '1',
      '--ops',
      '5000',
      '--json',
    ]);
    expect(r.status, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout);
    expect(s.failure).toBeNull();
    for (const p of TRANSIENT_POINTS) expect(s.injected[p], p).toBeGreaterThan(0);
    expect(s.injected['device-lost']).toBe(0);
    expect(s.retriedOps).toBeGreaterThan(0);
  }, 240_000);
});

it.each(POLICIES)(
  'stress (%s) with a high injection rate and tiny budgets passes, the invariants checked after every failed attempt',
  async (policy) => {
    const r = await stressRuns({
      seed: SEED,
      runs: 1,
      ops: 800,
      device: true,
      pageSize: 4096,
      hostPages: 6,
      maxFileSize: 32 * 4096,
      injectRate: 0.08,
      policyFor: async () => {
        const dm = await DeviceMemory.create(gpu, { devicePages: 5, pageSize: 4096 });
        return { policy: createDevicePolicy(policy, dm), close: () => dm.destroy() };
      },
    });
    expect(r.failure?.reason ?? null).toBeNull();
    expect(r.ops).toBe(800);
    expect(r.retriedOps).toBeGreaterThan(10);
  },
);
