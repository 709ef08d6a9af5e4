/**
 * Dawn prints two maxDynamic* limit-clamp warnings on stderr at adapter request on lavapipe, from
 * native code that no flag, toggle or callback of dawn.node reaches (docs/webgpu-findings.md says
 * what was tried). hmmlab leaves them, so this checks that they are all there is: `hmmlab info`
 * prints nothing else on stderr, and the tests' filter drops those lines and no others.
 */
import { expect, it } from 'vitest';
import { hmmlab, NATIVE_NOISE, ourStderr } from '../helpers/cli.ts';

it('hmmlab info prints nothing on stderr but the native lines, its report on stdout', async () => {
  const r = await hmmlab(['info']);
  expect(r.code).toBe(0);
  expect(r.stdout).toMatch(/^maxBufferSize\s+\d+$/m);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  for (const l of lines) expect(l).toMatch(NATIVE_NOISE);
  expect(ourStderr(r.stderr)).toEqual([]);
});

it('the filter keeps every other warning and error line', () => {
  const other = [
    'Warning: Backend validation enabled but Dawn was not built with DAWN_ENABLE_VULKAN_VALIDATION_LAYERS.',
    'Warning: maxDynamicUniformBuffersPerPipelineLayout is 8',
    'hmmlab: EGPU: device page table update: Validation error',
  ];
  const clamp =
    'Warning: maxDynamicStorageBuffersPerPipelineLayout artificially reduced from 1000000 to 16 to fit dynamic offset allocation limit.';
  expect(ourStderr([clamp, ...other, clamp].join('\n'))).toEqual(other);
});
