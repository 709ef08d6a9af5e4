/**
 * vmstat's two kinds of names: event counters (they add up over time and over runs) and gauges
 * (nr_*, blocks_used, device_frames_*: how things stand now, read before the final unmount, since
 * an unmount empties them).
 */
export const isGauge = (k: string): boolean =>
  (k.startsWith('nr_') && k !== 'nr_dirtied' && k !== 'nr_written') ||
  k === 'blocks_used' ||
  k.startsWith('device_frames_');
