/**
 * Progress bars on stderr, shown only when stderr is a terminal (CI logs stay small): the ops bar
 * of `hmmlab stress` and of long `hmmlab replay` runs, and the replays bar of stress's shrinking.
 */
import { SingleBar } from 'cli-progress';

/** A bar that can be stopped and cleared around other output. */
export interface ProgressBar {
  /** Clear the bar's line before something else writes to the same terminal (it redraws itself). */
  clearLine(): void;
  stop(): void;
}

/** An ops progress bar: ops done, ops/s, the seed of the run going. */
export interface OpsProgress extends ProgressBar {
  tick(done: number, seed?: number): void;
}

function startBar(label: string, unit: string, total: number, extra: string): SingleBar | null {
  const stream = process.stderr;
  if (!stream.isTTY) return null;
  const bar = new SingleBar({
    stream,
    format: `${label} [{bar}] {value}/{total} ${unit}${extra}`,
    hideCursor: true,
    clearOnComplete: true,
    barsize: 30,
  });
  bar.start(total, 0, { rate: '0', seedText: '', what: '' });
  return bar;
}

function controls(bar: SingleBar): ProgressBar {
  return {
    clearLine() {
      process.stderr.cursorTo(0);
      process.stderr.clearLine(0);
    },
    stop: () => bar.stop(),
  };
}

/** An ops progress bar on stderr, or null when stderr is not a terminal. */
export function opsProgressBar(label: string, total: number): OpsProgress | null {
  const bar = startBar(label, 'ops', total, ' | {rate} ops/s{seedText}');
  if (!bar) return null;
  const t0 = performance.now();
  return {
    ...controls(bar),
    tick(done, seed) {
      const s = (performance.now() - t0) / 1000;
      bar.update(done, {
        rate: s > 0 ? (done / s).toFixed(0) : '0',
        seedText: seed === undefined ? '' : ` | seed ${seed}`,
      });
    },
  };
}

/** A bar of steps (`unit`: "replays") with a short status text, or null when stderr is not a terminal. */
export function stepsProgressBar(
  label: string,
  unit: string,
  total: number,
): (ProgressBar & { tick(done: number, what: string): void }) | null {
  const bar = startBar(label, unit, total, ' | {what}');
  if (!bar) return null;
  return { ...controls(bar), tick: (done, what) => bar.update(done, { what }) };
}
