/**
 * The progress of a command's run, as one typed stream: every run function (runFp8ToBf16, runToDemo,
 * runToGguf, validate) takes one `onEvent` callback; cli/progress.ts turns the events into a bar and
 * lines. An exception thrown by the callback aborts the run like any other failure.
 */
export type RunEvent =
  /**
   * The work ahead: output bytes that `bytes` events will account for (resumed parts included), or
   * the sequences that `batch` events will count.
   */
  | { kind: "start"; command: string; total: number; unit: "bytes" | "sequences" }
  /** Input bytes read and output bytes produced since the last `bytes` event. */
  | { kind: "bytes"; inBytes: number; outBytes: number }
  /** An input shard finished (or was already complete: `skipped`). */
  | { kind: "shard"; shard: string; index: number; count: number; skipped: boolean; bytes: number; seconds: number }
  /** An output tensor was written. */
  | { kind: "tensor"; tensor: string; index: number; count: number; type: string; bytes: number }
  /** A forward pass finished a layer (`layer === layers`: the output head). */
  | { kind: "layer"; model: "reference" | "candidate"; layer: number; layers: number; batch: number; batches: number }
  /** A validation batch was scored: sequences done, tokens run per model, running perplexities. */
  | { kind: "batch"; done: number; total: number; tokens: number; seconds: number; ppl: number; pplBase?: number; meanKld?: number }
  | { kind: "done"; command: string; seconds: number };

export type EventKind = RunEvent["kind"];
export type OnEvent = (event: RunEvent) => void;
