/**
 * Progress on stderr: a live bar with bytes, GB/s and ETA on a terminal, plain lines otherwise (CI
 * logs, pipes). Machine-readable results go to stdout with --json, never mixed with this.
 */
import cliProgress from "cli-progress";

export interface Progress {
  add(bytes: number): void;
  line(text: string): void;
  stop(): void;
}

const gb = (n: number) => (n / 1e9).toFixed(2);

export function createProgress(opts: { total: number; label: string; quiet?: boolean }): Progress {
  const stream = process.stderr;
  if (opts.quiet) return { add: () => undefined, line: () => undefined, stop: () => undefined };
  if (!stream.isTTY) {
    return { add: () => undefined, line: (t) => stream.write(t + "\n"), stop: () => undefined };
  }
  const start = performance.now();
  let done = 0;
  const bar = new cliProgress.SingleBar(
    {
      stream,
      format: `${opts.label} [{bar}] {percentage}% | {doneGb}/{totalGb} GB | {rate} GB/s | ETA {eta_formatted}`,
      hideCursor: true,
      etaBuffer: 50,
      fps: 5,
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(opts.total, 0, { doneGb: gb(0), totalGb: gb(opts.total), rate: "0.00" });
  return {
    add(bytes) {
      done += bytes;
      const secs = (performance.now() - start) / 1000;
      bar.update(done, { doneGb: gb(done), rate: secs > 0 ? gb(done / secs) : "0.00" });
    },
    line(text) {
      bar.stop();
      stream.write(text + "\n");
      bar.start(opts.total, done, { doneGb: gb(done), totalGb: gb(opts.total), rate: "…" });
    },
    stop() {
      bar.stop();
    },
  };
}
