/**
 * Progress on stderr, rendered from a run's event stream (src/events.ts), for every command: on a
 * terminal a live bar with done/total, rate and ETA; otherwise (CI logs, nohup, pipes) the same
 * figures as a plain line every DEEPCAST_PROGRESS_INTERVAL seconds (default 10), plus the events'
 * own lines (shards, thinned tensors, scored batches). Machine-readable results go to stdout with
 * --json, never mixed with this.
 */
import type cliProgressModule from "cli-progress";
import { createRequire } from "node:module";
import type { OnEvent, RunEvent } from "../events.js";
import { fmtBytes } from "../units.js";

/** Seconds between progress lines without a terminal: `DEEPCAST_PROGRESS_INTERVAL` (default 10). */
export function progressIntervalSeconds(env: NodeJS.ProcessEnv = process.env): number {
  const v = Number(env["DEEPCAST_PROGRESS_INTERVAL"]);
  return env["DEEPCAST_PROGRESS_INTERVAL"] !== undefined && env["DEEPCAST_PROGRESS_INTERVAL"] !== "" && Number.isFinite(v) && v >= 0 ? v : 10;
}

/** h:mm:ss (m:ss under an hour); "?" when unknown. */
export function clock(s: number): string {
  if (!Number.isFinite(s) || s < 0) return "?";
  const t = Math.round(s);
  const h = Math.floor(t / 3600);
  const mm = String(Math.floor((t % 3600) / 60)).padStart(h ? 2 : 1, "0");
  return `${h ? `${h}:` : ""}${mm}:${String(t % 60).padStart(2, "0")}`;
}

type ProgressEvent = Extract<RunEvent, { kind: "progress" }>;

/** "1.20 GB/4.30 GB (27.9%), 152.31 MB/s, ETA 0:22": a task's figures `elapsed` seconds after it began. */
export function progressFigures(e: Pick<ProgressEvent, "unit" | "done" | "total" | "resumed">, elapsed: number): string {
  const rate = elapsed > 0 ? (e.done - e.resumed) / elapsed : 0;
  const left = Math.max(0, e.total - e.done);
  const eta = left === 0 ? 0 : rate > 0 ? left / rate : NaN;
  const pct = e.total > 0 ? ((100 * e.done) / e.total).toFixed(1) : "100.0";
  const amount = e.unit === "bytes"
    ? `${fmtBytes(e.done)}/${fmtBytes(e.total)}`
    : `${Math.floor(e.done)}/${Math.round(e.total)} ${e.unit}`;
  const speed = e.unit === "bytes" ? `${fmtBytes(rate)}/s` : `${rate.toFixed(e.unit === "tokens" ? 1 : 2)} ${e.unit}/s`;
  return `${amount} (${pct}%), ${speed}, ETA ${clock(eta)}, elapsed ${clock(elapsed)}`;
}

/** The line a discrete event prints, or null (progress, bytes, start, layer and done print none). */
export function eventLine(e: RunEvent, opts: { ranks?: number; unit?: string; withReference?: boolean } = {}): string | null {
  switch (e.kind) {
    case "shard":
      if (e.skipped) return `[${e.index + 1}/${e.count}] ${e.shard}: already complete, skipped`;
      return opts.ranks !== undefined
        ? `[${e.index + 1}/${e.count}] ${e.shard}: ${fmtBytes(e.bytes)} to ${opts.ranks} rank file(s) in ${e.seconds.toFixed(1)} s`
        : `[${e.index + 1}/${e.count}] ${e.shard}: ${fmtBytes(e.bytes)} in ${e.seconds.toFixed(1)} s (${(e.bytes / 1e9 / Math.max(e.seconds, 1e-9)).toFixed(2)} GB/s)`;
    case "tensor":
      return `[${e.index + 1}/${e.count}] ${e.tensor} ${e.type} ${fmtBytes(e.bytes)}`;
    case "batch": {
      const models = opts.withReference ? 2 : 1;
      return `[${e.done}/${e.total}] ${opts.unit ?? "sequences"}, ${e.tokens} tokens${opts.withReference ? " through each model" : ""} in ${e.seconds.toFixed(1)} s ` +
        `(${((e.tokens * models) / Math.max(e.seconds, 1e-9)).toFixed(1)} tokens/s)` +
        (e.ppl !== undefined ? `, PPL ${e.ppl.toFixed(4)}` : "") +
        (e.pplBase !== undefined ? `, PPL(base) ${e.pplBase.toFixed(4)}` : "") +
        (e.meanKld !== undefined ? `, mean KLD ${e.meanKld.toFixed(6)}` : "");
    }
    default:
      return null;
  }
}

export interface ProgressOptions {
  /** Names the command's own task in progress lines ("to-gguf Q4_K_M"); downloads are named by their file. */
  label: string;
  /** to-demo: the rank files a shard goes to, for shard lines. */
  ranks?: number;
  /** What `batch` events count ("windows", "chunks"). */
  unit?: string;
  /** validate with a reference: batch lines count tokens through each model. */
  withReference?: boolean;
  /** Default process.stderr; `tty` and `intervalSeconds` default from it and the environment. */
  stream?: NodeJS.WritableStream & { isTTY?: boolean };
  tty?: boolean;
  intervalSeconds?: number;
}

export interface ProgressView {
  onEvent: OnEvent;
  /** Writes a line of its own without breaking the live bar. */
  line(text: string): void;
  stop(): void;
}

interface Task {
  name: string;
  last: ProgressEvent;
  /** performance.now() when the task began. */
  t0: number;
  /** When its last plain line was printed (or when it began). */
  printed: number;
  /** When its last event came. */
  updated: number;
  lines: number;
}

type CliProgress = typeof cliProgressModule;
let cliProgressLoaded: CliProgress | undefined;
/** cli-progress, loaded when a bar is first drawn (with stderr not a terminal it never is: ~25 ms of start-up saved). */
function cliProgress(): CliProgress {
  cliProgressLoaded ??= createRequire(import.meta.url)("cli-progress") as CliProgress;
  return cliProgressLoaded;
}

/** One event consumer for every command's progress. */
export function progressView(opts: ProgressOptions): ProgressView {
  const stream = opts.stream ?? process.stderr;
  const live = opts.tty ?? stream.isTTY === true;
  const intervalMs = 1000 * (opts.intervalSeconds ?? progressIntervalSeconds());
  const tasks = new Map<string, Task>();
  let bar: { task: Task; bar: cliProgressModule.SingleBar } | null = null;
  let timer: NodeJS.Timeout | null = null;
  let lastTensorLine = 0;

  const figures = (t: Task, now: number) => progressFigures(t.last, (now - t.t0) / 1000);
  const plain = (t: Task, now: number) => {
    stream.write(`${t.name}: ${figures(t, now)}\n`);
    t.printed = now;
    t.lines++;
  };
  const stopBar = () => {
    bar?.bar.stop();
    bar = null;
  };
  const showBar = (t: Task, now: number) => {
    // two tasks at once (a download starting while a conversion finishes its shard): the bar stays
    // with the one it shows until that one ends or goes quiet
    if (bar && bar.task !== t && bar.task.last.done < bar.task.last.total && now - bar.task.updated < 1000) return;
    if (bar?.task !== t) {
      stopBar();
      const cp = cliProgress();
      const b = new cp.SingleBar(
        { stream: stream as NodeJS.WriteStream, format: `${t.name} [{bar}] {text}`, hideCursor: true, fps: 5, barsize: 30 },
        cp.Presets.shades_classic,
      );
      b.start(t.last.total, t.last.done, { text: figures(t, now) });
      bar = { task: t, bar: b };
    } else {
      bar.bar.update(t.last.done, { text: figures(t, now) });
    }
    if (t.last.done >= t.last.total && t.name.startsWith("download ")) stopBar();
  };
  /** Plain mode: every unfinished task that has been quiet for an interval gets a line. */
  const tick = () => {
    const now = performance.now();
    for (const t of tasks.values()) if (t.last.done < t.last.total && now - t.printed >= intervalMs) plain(t, now);
  };
  const write = (text: string) => {
    if (bar) {
      const { task } = bar;
      stopBar();
      stream.write(text + "\n");
      if (task.last.done < task.last.total) showBar(task, performance.now());
    } else {
      stream.write(text + "\n");
    }
  };

  return {
    onEvent(e) {
      if (e.kind === "progress") {
        const now = performance.now();
        let t = tasks.get(e.task);
        if (!t) {
          t = { name: e.task.startsWith("download ") ? e.task : opts.label, last: e, t0: now - 1000 * e.seconds, printed: now, updated: now, lines: 0 };
          tasks.set(e.task, t);
        }
        t.last = e;
        t.updated = now;
        if (live) {
          showBar(t, now);
        } else {
          if (e.done >= e.total) {
            // the end of a task that printed along the way; a short one stays silent
            if (t.lines > 0) plain(t, now);
            tasks.delete(e.task);
          } else if (now - t.printed >= intervalMs) {
            plain(t, now);
          }
          if (!timer) {
            timer = setInterval(tick, Math.max(10, Math.min(1000, intervalMs / 4)));
            timer.unref();
          }
        }
        return;
      }
      if (e.kind === "done") {
        // the run is over: no more live bar or interval lines for it
        stopBar();
        tasks.clear();
        return;
      }
      if (e.kind === "tensor" && !(live || e.index + 1 === e.count || e.index + 1 >= lastTensorLine + Math.max(1, Math.floor(e.count / 20)))) return;
      const text = eventLine(e, opts);
      if (text === null) return;
      if (e.kind === "tensor") lastTensorLine = e.index + 1;
      write(text);
    },
    line: write,
    stop() {
      stopBar();
      if (timer) clearInterval(timer);
      timer = null;
    },
  };
}
