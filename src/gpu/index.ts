export * from './adapter.ts';
export * from './copy.ts';
export * from './device.ts';
export * from './shader.ts';
