export * from './adapter.ts';
export * from './device.ts';
export * from './shader.ts';
