/**
 * Progress on stderr, from a run's event stream (src/events.ts): a live bar with bytes, GB/s and ETA
 * on a terminal, plain lines otherwise (CI logs, pipes). Machine-readable results go to stdout with
 * --json, never mixed with this.
 */
import cliProgress from "cli-progress";
import type { OnEvent, RunEvent } from "../events.js";
import { fmtBytes } from "../units.js";

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

/** The line an event prints, or null (bytes move the bar; start/done print nothing). */
export function eventLine(e: RunEvent, opts: { ranks?: number } = {}): string | null {
  switch (e.kind) {
    case "shard":
      if (e.skipped) return `[${e.index + 1}/${e.count}] ${e.shard}: already complete, skipped`;
      return opts.ranks !== undefined
        ? `[${e.index + 1}/${e.count}] ${e.shard}: ${fmtBytes(e.bytes)} to ${opts.ranks} rank file(s) in ${e.seconds.toFixed(1)} s`
        : `[${e.index + 1}/${e.count}] ${e.shard}: ${fmtBytes(e.bytes)} in ${e.seconds.toFixed(1)} s (${(e.bytes / 1e9 / Math.max(e.seconds, 1e-9)).toFixed(2)} GB/s)`;
    case "tensor":
      return `[${e.index + 1}/${e.count}] ${e.tensor} ${e.type} ${fmtBytes(e.bytes)}`;
    default:
      return null;
  }
}

/**
 * An event consumer for a byte-counting run (fp8-to-bf16, to-demo, to-gguf): the bar is created at
 * `start`; on a non-terminal, tensor lines are thinned to one per 5% of the tensors.
 */
export function byteProgress(label: string, opts: { ranks?: number } = {}): { onEvent: OnEvent; stop(): void } {
  let progress: Progress | null = null;
  let lastTensorLine = 0;
  return {
    onEvent(e) {
      if (e.kind === "start") {
        progress?.stop();
        progress = createProgress({ total: e.total, label });
        return;
      }
      if (!progress) return;
      if (e.kind === "bytes") {
        progress.add(e.outBytes);
        return;
      }
      if (e.kind === "tensor" && !(process.stderr.isTTY || e.index + 1 === e.count || e.index + 1 >= lastTensorLine + Math.max(1, Math.floor(e.count / 20)))) return;
      const line = eventLine(e, opts);
      if (line === null) return;
      if (e.kind === "tensor") lastTensorLine = e.index + 1;
      progress.line(line);
    },
    stop() {
      progress?.stop();
    },
  };
}

/** An event consumer for `validate`: per-layer status on a terminal, a line per scored batch. */
export function validateProgress(unit: string, withReference: boolean): OnEvent {
  const err = process.stderr;
  const live = err.isTTY === true;
  return (e) => {
    if (e.kind === "layer" && live) {
      err.write(`\r\x1b[Kbatch ${e.batch + 1}/${e.batches}: ${e.model} ${e.layer < e.layers ? `layer ${e.layer + 1}/${e.layers}` : "head"}`);
    } else if (e.kind === "batch") {
      if (live) err.write("\r\x1b[K");
      const models = withReference ? 2 : 1;
      err.write(`[${e.done}/${e.total}] ${unit}, ${e.tokens} tokens${withReference ? " through each model" : ""} in ${e.seconds.toFixed(1)} s ` +
        `(${((e.tokens * models) / Math.max(e.seconds, 1e-9)).toFixed(1)} tokens/s), ` +
        `PPL ${e.ppl.toFixed(4)}` + (e.pplBase !== undefined ? `, PPL(base) ${e.pplBase.toFixed(4)}, mean KLD ${e.meanKld!.toFixed(6)}` : "") + "\n");
    }
  };
}
