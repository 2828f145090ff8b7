/**
 * The progress of a command's run, as one typed stream: every run function (runFp8ToBf16, runToDemo,
 * runToGguf, validate, runImatrix) and a Hub source's downloads take one `onEvent` callback;
 * cli/progress.ts turns the events into a live line on a terminal and a line every few seconds
 * otherwise. An exception thrown by the callback aborts the run like any other failure.
 */
/** What a progress event counts: bytes written, tokens through the model, tensors or KLD measurements of a plan search. */
export type ProgressUnit = "bytes" | "tokens" | "tensors" | "measurements";

export type RunEvent =
  /**
   * The work ahead: output bytes that `bytes` events will account for (resumed parts included), or
   * the sequences (validate's windows or chunks, imatrix's chunks) that `batch` events will count.
   */
  | { kind: "start"; command: string; total: number; unit: "bytes" | "sequences" }
  /**
   * How far a long task has come, cumulative, after every step of it (a chunk written, a layer of a
   * forward pass, a piece of a download): `done` of `total` in `unit` (a forward pass counts the
   * tokens of the batch times the fraction of its layers done, through each model), `resumed` of
   * `done` already there from an interrupted run (not work of this run), `seconds` since the task
   * began. Rate = (done - resumed) / seconds; ETA = (total - done) / rate. `task` is the command, or
   * `download <file>` for a Hub download.
   */
  | { kind: "progress"; task: string; unit: ProgressUnit; done: number; total: number; resumed: number; seconds: number }
  /** Input bytes read and output bytes produced since the last `bytes` event. */
  | { kind: "bytes"; inBytes: number; outBytes: number }
  /** An input shard finished (or was already complete: `skipped`). */
  | { kind: "shard"; shard: string; index: number; count: number; skipped: boolean; bytes: number; seconds: number }
  /** An output tensor was written. */
  | { kind: "tensor"; tensor: string; index: number; count: number; type: string; bytes: number }
  /** A forward pass finished a layer (`layer === layers`: the output head). */
  | { kind: "layer"; model: "reference" | "candidate"; layer: number; layers: number; batch: number; batches: number }
  /**
   * A batch of sequences went through the model(s): sequences done, tokens run per model, running
   * perplexities (imatrix: `ppl` unless run without it).
   */
  | { kind: "batch"; done: number; total: number; tokens: number; seconds: number; ppl?: number; pplBase?: number; meanKld?: number }
  | { kind: "done"; command: string; seconds: number };

export type EventKind = RunEvent["kind"];
export type OnEvent = (event: RunEvent) => void;

/** Emits a task's `progress` events: `add` work done, `skip` work found done, `set` the amount done. */
export interface ProgressMeter {
  add(n: number): void;
  skip(n: number): void;
  set(done: number): void;
}

/** Starts a task's progress, `resumed` of it already done (emitted at once). */
export function progressMeter(emit: OnEvent, task: string, unit: ProgressUnit, total: number, resumed = 0): ProgressMeter {
  const t0 = performance.now();
  let done = resumed;
  const send = () => emit({ kind: "progress", task, unit, done, total, resumed, seconds: (performance.now() - t0) / 1000 });
  send();
  return {
    add(n) {
      done += n;
      send();
    },
    skip(n) {
      done += n;
      resumed += n;
      send();
    },
    set(d) {
      done = d;
      send();
    },
  };
}
