/** Summary statistics of benchmark samples: nvbandwidth reports the median; min and max show the spread. */
export interface Summary {
  median: number;
  min: number;
  max: number;
  samples: number;
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

export function summarize(values: readonly number[]): Summary {
  return {
    median: median(values),
    min: values.length ? Math.min(...values) : Number.NaN,
    max: values.length ? Math.max(...values) : Number.NaN,
    samples: values.length,
  };
}

/** Bytes per nanosecond is GB/s (10^9 bytes a second, as nvbandwidth and most GPU tools count). */
export function gbps(bytes: number, ms: number): number {
  return bytes / (ms * 1e6);
}
