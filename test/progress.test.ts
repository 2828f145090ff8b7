/**
 * Progress: every long run reports through the typed event stream (src/events.ts), and the CLI
 * renders it. Without a terminal (here: stderr is a pipe) a line with done/total, rate and ETA comes
 * every DEEPCAST_PROGRESS_INTERVAL seconds, never per event, and --json keeps stdout clean JSON.
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RunEvent } from "../src/events.js";
import { progressFigures, progressView } from "../src/cli/progress.js";
import { planImatrixChunks, runImatrix } from "../src/model/imatrix-run.js";
import { planProtocol } from "../src/model/eval-protocol.js";
import { validate } from "../src/model/validate.js";
import { HfWeightSource } from "../src/model/weights.js";
import { FIXTURE, GOLDEN, ROOT, tempDir } from "./helpers.js";

const BIN = join(ROOT, "bin", "deepcast.js");
const EVAL_TEXT = join(GOLDEN, "eval", "kjv_eval.txt");
const evalIds = (JSON.parse(readFileSync(join(GOLDEN, "eval", "kjv_eval.ids.json"), "utf8")) as { ids: number[] }).ids;

type Progress = Extract<RunEvent, { kind: "progress" }>;

function deepcast(interval: string, ...args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    encoding: "utf8",
    env: { ...process.env, HF_HUB_OFFLINE: "1", DEEPCAST_PROGRESS_INTERVAL: interval },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));

/** A stream that keeps what is written. */
function sink() {
  const out: string[] = [];
  return { out, stream: { write: (s: string) => (out.push(s), true), isTTY: false } as unknown as NodeJS.WritableStream };
}

describe("progress figures", () => {
  it("rate counts only this run's work (a resumed part is not), ETA is what is left at that rate", () => {
    // 1 GB found done, 2 GB more in 10 s: 200 MB/s, 1 GB left: 5 s
    expect(progressFigures({ unit: "bytes", done: 3e9, total: 4e9, resumed: 1e9 }, 10)).toBe("3.00 GB/4.00 GB (75.0%), 200.00 MB/s, ETA 0:05, elapsed 0:10");
    // a quarter in an hour: three hours left; a fractional token count (a layer's share) shows whole
    expect(progressFigures({ unit: "tokens", done: 1536, total: 6144, resumed: 0 }, 3600)).toBe("1536/6144 tokens (25.0%), 0.4 tokens/s, ETA 3:00:00, elapsed 1:00:00");
    expect(progressFigures({ unit: "tokens", done: 1536.6, total: 6144, resumed: 0 }, 3600)).toMatch(/^1536\/6144 tokens/);
    expect(progressFigures({ unit: "bytes", done: 0, total: 10, resumed: 0 }, 1)).toMatch(/ETA \?/);
  });
});

describe("progress view without a terminal", () => {
  const at = (done: number, total = 100): Progress => ({ kind: "progress", task: "to-gguf", unit: "bytes", done, total, resumed: 0, seconds: 0 });

  it("prints at the interval, not per event; a task shorter than the interval prints nothing", () => {
    const s = sink();
    const v = progressView({ label: "to-gguf Q8_0", stream: s.stream, tty: false, intervalSeconds: 3600 });
    for (let d = 0; d <= 100; d += 5) v.onEvent(at(d));
    v.stop();
    expect(s.out).toEqual([]);
  });

  it("prints a line every interval even while no event comes (a long layer), and the end of a task that printed", async () => {
    const s = sink();
    const v = progressView({ label: "to-gguf Q8_0", stream: s.stream, tty: false, intervalSeconds: 0.05 });
    v.onEvent(at(10));
    await sleep(400);
    const quiet = s.out.length;
    expect(quiet).toBeGreaterThanOrEqual(2);
    expect(s.out.every((l) => /^to-gguf Q8_0: 10 B\/100 B \(10\.0%\), [\d.]+ B\/s, ETA [\d:?]+, elapsed \d+:\d\d\n$/.test(l))).toBe(true);
    v.onEvent(at(100));
    expect(s.out.at(-1)).toMatch(/^to-gguf Q8_0: 100 B\/100 B \(100\.0%\), .*ETA 0:00/);
    await sleep(200);
    v.stop();
    expect(s.out.length).toBe(quiet + 1);
  });

  it("names a download by its file, and prints the events' own lines", () => {
    const s = sink();
    const v = progressView({ label: "validate", unit: "chunks", stream: s.stream, tty: false, intervalSeconds: 0 });
    v.onEvent({ kind: "progress", task: "download org/m@main/model-00001-of-00002.safetensors", unit: "bytes", done: 5e8, total: 1e9, resumed: 0, seconds: 1 });
    v.onEvent({ kind: "batch", done: 1, total: 2, tokens: 512, seconds: 2 });
    v.stop();
    expect(s.out[0]).toMatch(/^download org\/m@main\/model-00001-of-00002\.safetensors: 500\.00 MB\/1\.00 GB \(50\.0%\)/);
    expect(s.out[1]).toBe("[1/2] chunks, 512 tokens in 2.0 s (256.0 tokens/s)\n");
  });
});

describe("the CLI without a terminal", () => {
  const line = /^(\S.*?): ([\d.]+ [KMG]?B)\/([\d.]+ [KMG]?B) \((\d+\.\d)%\), ([\d.]+ [KMG]?B)\/s, ETA (\d+:\d\d), elapsed \d+:\d\d$/;

  it("to-gguf --json: progress lines with bytes done/total, rate and ETA on stderr, clean JSON on stdout", async () => {
    const out = join(await tempDir(), "q8.gguf");
    const r = deepcast("0.05", "to-gguf", FIXTURE, "-q", "Q8_0", "-o", out, "--json", "--threads", "1");
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ command: "to-gguf", quant: "Q8_0" });
    const lines = r.stderr.split("\n").map((l) => line.exec(l)).filter((m) => m !== null);
    expect(lines.length, r.stderr).toBeGreaterThanOrEqual(2);
    for (const m of lines) {
      expect(m[1]).toBe("to-gguf Q8_0");
      expect(m[3]).toBe(lines[0]![3]);
    }
    expect(lines.at(-1)![4]).toBe("100.0");
    expect(lines.at(-1)![2]).toBe(lines.at(-1)![3]);
    // percentages never go back
    const pct = lines.map((m) => Number(m[4]));
    expect(pct).toEqual([...pct].sort((a, b) => a - b));
  });

  it("to-gguf --target-size: the plan search reports tensors done/total, rate and ETA too", async () => {
    const out = join(await tempDir(), "t.gguf");
    const imatrix = join(ROOT, "fixtures", "llama-cpp-tiny-dsv3", "tiny-dsv3.imatrix.gguf");
    const r = deepcast("0.05", "to-gguf", FIXTURE, "--target-size", "5M", "--imatrix", imatrix, "-o", out, "--dry-run", "--json", "--threads", "1");
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ command: "to-gguf" });
    const search = /^to-gguf plan search: (\d+)\/(\d+) tensors \((\d+\.\d)%\), [\d.]+ tensors\/s, ETA \d+:\d\d, elapsed \d+:\d\d$/;
    const lines = r.stderr.split("\n").map((l) => search.exec(l)).filter((m) => m !== null);
    expect(lines.length, r.stderr).toBeGreaterThanOrEqual(2);
    expect(lines.at(-1)![1]).toBe(lines.at(-1)![2]);
  });

  it("to-gguf with the default interval (10 s): a short run prints no progress line", async () => {
    const out = join(await tempDir(), "bf16.gguf");
    const r = deepcast("", "to-gguf", FIXTURE, "-q", "BF16", "-o", out, "--threads", "1");
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr.split("\n").filter((l) => line.test(l))).toEqual([]);
  });

  it("imatrix --json: tokens done/total, tokens/s and ETA on stderr, clean JSON on stdout", async () => {
    const out = join(await tempDir(), "im.gguf");
    const r = deepcast("0.05", "imatrix", FIXTURE, "-f", EVAL_TEXT, "-o", out, "-c", "128", "--chunks", "4", "--json", "--threads", "1", "--memory", "300M");
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ command: "imatrix", chunks: 4, chunkCount: 4 });
    const tok = [...r.stderr.matchAll(/^imatrix: (\d+)\/(\d+) tokens \(([\d.]+)%\), ([\d.]+) tokens\/s, ETA (\d+:\d\d|\?), elapsed/gm)];
    expect(tok.length, r.stderr).toBeGreaterThanOrEqual(2);
    expect(tok.every((m) => m[2] === "512")).toBe(true);
    expect(tok.at(-1)![1]).toBe("512");
    expect(r.stderr).toMatch(/^\[4\/4\] chunks, 512 tokens in [\d.]+ s \([\d.]+ tokens\/s\), PPL \d+\.\d{4}$/m);
  });
});

describe("the library's event stream", () => {
  let fp8: HfWeightSource;
  beforeAll(async () => {
    fp8 = await HfWeightSource.open(FIXTURE, { threads: 1 });
  });
  afterAll(async () => {
    await fp8.close();
  });

  const check = (events: RunEvent[], task: string, total: number) => {
    const p = events.filter((e): e is Progress => e.kind === "progress");
    expect(p.length).toBeGreaterThan(4);
    expect(p.every((e) => e.task === task && e.unit === "tokens" && e.total === total && e.resumed === 0)).toBe(true);
    for (let i = 1; i < p.length; i++) {
      expect(p[i]!.done).toBeGreaterThanOrEqual(p[i - 1]!.done);
      expect(p[i]!.seconds).toBeGreaterThanOrEqual(p[i - 1]!.seconds);
    }
    expect(p[0]!.done).toBe(0);
    expect(p.at(-1)!.done).toBe(total);
    expect(events[0]).toMatchObject({ kind: "start", command: task });
    expect(events.at(-1)).toMatchObject({ kind: "done", command: task });
  };

  it("validate emits progress in tokens through each model, layer by layer, up to the total", async () => {
    const plan = planProtocol(evalIds, { protocol: "llama", ctx: 128, chunks: 3, bos: 0, addBos: true });
    const events: RunEvent[] = [];
    await validate(fp8, fp8, plan.sequences, { threads: 1, batchSequences: 2, onEvent: (e) => events.push(e) });
    check(events, "validate", 2 * 3 * 128);
    // 2 batches x 2 models x (4 layers + head)
    expect(events.filter((e) => e.kind === "progress").length).toBe(1 + 2 * 2 * 5);
  });

  it("runImatrix emits start, progress per layer, batches with the running PPL, done", async () => {
    const plan = planImatrixChunks(evalIds, { ctx: 128, chunks: 4, bos: 0, addBos: true });
    const events: RunEvent[] = [];
    await runImatrix(fp8, plan, { chunksPerBatch: 2, threads: 1, onEvent: (e) => events.push(e) });
    check(events, "imatrix", 4 * 128);
    const batches = events.filter((e) => e.kind === "batch");
    expect(batches.map((b) => [b.done, b.total, b.tokens])).toEqual([[2, 4, 256], [4, 4, 512]]);
    expect(batches.every((b) => b.ppl !== undefined && b.ppl > 1)).toBe(true);
  });
});

describe("progress view on a terminal", () => {
  it("draws a bar (cli-progress, loaded on first use) with the label and the figures, and ends it", () => {
    const out: string[] = [];
    const stream = {
      write: (s: string) => (out.push(s), true), isTTY: true, columns: 120,
      cursorTo: () => true, clearLine: () => true, moveCursor: () => true,
    } as unknown as NodeJS.WritableStream;
    const v = progressView({ label: "to-gguf Q8_0", stream, tty: true });
    v.onEvent({ kind: "progress", task: "to-gguf", unit: "bytes", done: 30, total: 100, resumed: 0, seconds: 0 });
    v.onEvent({ kind: "progress", task: "to-gguf", unit: "bytes", done: 100, total: 100, resumed: 0, seconds: 1 });
    v.stop();
    const text = out.join("");
    expect(text).toMatch(/to-gguf Q8_0 \[[^\]]*\] 30 B\/100 B \(30\.0%\)/);
  });
});
