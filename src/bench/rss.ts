/**
 * Resident memory, for real: the peak resident set (VmHWM of /proc/self/status; the OS's maxRSS
 * elsewhere), which Linux lets a process reset to what is resident now (/proc/self/clear_refs), so
 * that one step's peak can be told from the steps before it.
 */
import { readFileSync, writeFileSync } from 'node:fs';

/** Reset the peak resident set (VmHWM) to what is resident now; false where /proc does not allow it. */
export function resetPeakRss(): boolean {
  try {
    writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}

/** The peak resident set since the last reset (or since the start), bytes. */
export function peakRss(): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) return Number(m[1]) * 1024;
  } catch {
    // not Linux: the OS's own figure
  }
  return process.resourceUsage().maxRSS * 1024;
}

/** What is resident now, bytes. */
export function currentRss(): number {
  return process.memoryUsage().rss;
}
