/**
 * The CUDA matmul backend on a GPU machine: checks it, then times it against the CPU.
 *
 *   npx tsx bench/forward-gpu.ts [--runs 5] [--threads 16] [--out gpu.json] [--require-gpu]
 *   node build/forward-gpu.mjs ...          (the same, bundled by bench/gpu-pack.sh: no node_modules)
 *
 * 1. Checks (GPU only): cudaMatmul against the CPU f32Matmul on random data (relative error
 *    < 1e-5, strided y included), and the forward pass on the golden 4 x 128 batch with the CUDA
 *    backend against model.py's logits (fixtures/tiny-dsv3-golden, relative error <= 1e-4).
 * 2. Timing: the forward pass (golden batch 4 x 128, 8 eval windows of 256) with the CPU backend
 *    at --threads threads and with the CUDA backend, median tokens/s; and one large matmul on each.
 *
 * Writes a JSON summary to --out (also on failure) and exits 1 when a check fails, 2 when
 * --require-gpu is given and CUDA is unusable (the reason is printed).
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { dirname, join } from "node:path";
import { PACKAGE_ROOT } from "../src/formats/load.js";
import { cudaNative, selectBackend, type BackendOps, type CudaNative } from "../src/model/backend.js";
import { forward } from "../src/model/forward.js";
import { perplexityWindows } from "../src/model/perplexity.js";
import { HfWeightSource } from "../src/model/weights.js";
import { kernels } from "../src/quant/kernels.js";
import { random, relError } from "../test/numeric.js";

// The package root as the library finds it (formats.ts: one level above the module, which holds
// for src/, dist/ and the bundle in build/).
const ROOT = PACKAGE_ROOT;
const FIXTURE = join(ROOT, "fixtures", "tiny-dsv3");
const GOLDEN = join(ROOT, "fixtures", "tiny-dsv3-golden");
const argv = process.argv;
const opt = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1]! : fallback);
const runs = Math.max(1, Number(opt("--runs", "5")));
const threads = Math.max(1, Number(opt("--threads", String(availableParallelism()))));
const outPath = opt("--out", "");
const requireGpu = argv.includes("--require-gpu");

interface Summary {
  ok: boolean;
  node: string;
  cpuKernels: string;
  threads: number;
  cuda: { device: "cpu" | "cuda"; deviceInfo: string | null; reason: string | null };
  checks: { name: string; ok: boolean; value: number; limit: number }[];
  forward: { backend: string; workload: string; tokens: number; medianMs: number; bestMs: number; tokensPerSec: number }[];
  /** Where the CUDA forward's time goes: one extra pass per workload, CUDA events around each matmul. */
  cudaBreakdown: { workload: string; totalMs: number; matmuls: number; uploadMs: number; kernelMs: number; downloadMs: number }[];
  matmul: { backend: string; tokens: number; in: number; out: number; medianMs: number; gflops: number; kernelMs?: number; kernelGflops?: number; uploadMs?: number; downloadMs?: number }[];
  error?: string;
}

const summary: Summary = {
  ok: false,
  node: process.version,
  cpuKernels: "",
  threads,
  cuda: { device: "cpu", deviceInfo: null, reason: null },
  checks: [],
  forward: [],
  cudaBreakdown: [],
  matmul: [],
};

function save(): void {
  if (!outPath) return;
  mkdirSync(dirname(outPath), { recursive: true });
  writeFileSync(outPath, JSON.stringify(summary, null, 2) + "\n");
}

function check(name: string, value: number, limit: number): boolean {
  const ok = value <= limit;
  summary.checks.push({ name, ok, value, limit });
  console.log(`${ok ? "ok  " : "FAIL"} ${name}: ${value.toExponential(3)} (limit ${limit.toExponential(0)})`);
  return ok;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<number> {
  summary.cpuKernels = `${selectBackend("cpu").backend}/${kernels().simd()}`;
  const cpu = selectBackend("cpu");
  const gpu = selectBackend("cuda");
  summary.cuda = { device: gpu.device, deviceInfo: gpu.deviceInfo, reason: gpu.reason };
  console.log(`node ${process.version}, CPU kernels ${summary.cpuKernels}, ${threads} threads`);
  console.log(gpu.device === "cuda" ? `CUDA: ${gpu.deviceInfo}` : `CUDA unusable: ${gpu.reason}`);
  if (gpu.device !== "cuda" && requireGpu) {
    summary.error = `CUDA unusable: ${gpu.reason}`;
    return 2;
  }

  const batch = (JSON.parse(readFileSync(join(GOLDEN, "logits", "tokens.json"), "utf8")) as { sequences: number[][] }).sequences;
  const ids = (JSON.parse(readFileSync(join(GOLDEN, "eval", "kjv_eval.ids.json"), "utf8")) as { ids: number[] }).ids;
  const windows = perplexityWindows(ids, 256, 0).slice(0, 8).map((w) => w.input);
  const src = await HfWeightSource.open(FIXTURE, { threads: Math.min(threads, 8) });
  let ok = true;
  try {
    // ---- checks ----
    if (gpu.device === "cuda") {
      const shapes: [number, number, number, number][] = [[1, 7, 3, 3], [37, 256, 130, 130], [512, 256, 2048, 2048], [128, 1000, 333, 500], [300, 7168, 65, 65]];
      let worst = 0;
      for (const [T, K, N, ldy] of shapes) {
        const x = random(T * K, T * 7 + K);
        const w = random(N * K, N * 13 + K);
        const got = new Float32Array((T - 1) * ldy + N);
        const want = new Float32Array((T - 1) * ldy + N);
        gpu.matmul(x, w, got, T, K, N, 1, ldy);
        cpu.matmul(x, w, want, T, K, N, threads, ldy);
        worst = Math.max(worst, relError(got, want));
      }
      ok = check("cudaMatmul vs CPU f32Matmul, random data, max rel error", worst, 1e-5) && ok;
      const buf = readFileSync(join(GOLDEN, "logits", "logits.fp8-dequant.f32.bin"));
      const golden = new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
      const r = await forward(src, batch, { threads, ops: gpu });
      ok = check("forward (CUDA backend) vs model.py logits, golden batch, rel error", relError(r.logits, golden), 1e-4) && ok;
    }

    // ---- timing ----
    const backends: [string, BackendOps][] = [[`cpu x${threads}`, cpu]];
    if (gpu.device === "cuda") backends.push(["cuda", gpu]);
    for (const [label, seqs] of [["golden batch 4 x 128", batch], ["eval windows 8 x 256", windows]] as const) {
      const n = seqs.reduce((a, s) => a + s.length, 0);
      for (const [name, ops] of backends) {
        const times: number[] = [];
        for (let i = 0; i < runs + 1; i++) {
          const t0 = performance.now();
          await forward(src, seqs, { threads, ops });
          if (i > 0) times.push(performance.now() - t0);
        }
        const med = median(times);
        const row = { backend: name, workload: label, tokens: n, medianMs: med, bestMs: Math.min(...times), tokensPerSec: n / (med / 1000) };
        summary.forward.push(row);
        console.log(`forward ${label}, ${name}: ${row.tokensPerSec.toFixed(0)} tokens/s (median ${med.toFixed(1)} ms, best ${row.bestMs.toFixed(1)} ms)`);
      }
    }
    // Where the CUDA forward's time goes.
    const loader = cudaNative();
    const n: CudaNative | null = gpu.device === "cuda" && "native" in loader ? loader.native : null;
    if (n) {
      for (const [label, seqs] of [["golden batch 4 x 128", batch], ["eval windows 8 x 256", windows]] as const) {
        const row = { workload: label, totalMs: 0, matmuls: 0, uploadMs: 0, kernelMs: 0, downloadMs: 0 };
        const counted: BackendOps = {
          ...gpu,
          matmul: (x, w, y, tokens, inDim, outDim, th, ldy) => {
            gpu.matmul(x, w, y, tokens, inDim, outDim, th, ldy);
            const t = n.cudaLastTimes();
            row.matmuls++;
            if (t) {
              row.uploadMs += t.uploadMs;
              row.kernelMs += t.kernelMs;
              row.downloadMs += t.downloadMs;
            }
          },
        };
        const t0 = performance.now();
        await forward(src, seqs, { threads, ops: counted });
        row.totalMs = performance.now() - t0;
        summary.cudaBreakdown.push(row);
        console.log(`CUDA forward ${label}: ${row.totalMs.toFixed(1)} ms, ${row.matmuls} matmuls: upload ${row.uploadMs.toFixed(1)} ms, ` +
          `kernels ${row.kernelMs.toFixed(1)} ms, download ${row.downloadMs.toFixed(1)} ms (the rest on the CPU)`);
      }
    }
    // One large matmul (a DeepSeek-V3-sized projection for 512 tokens), uploads included.
    const [T, K, N] = [512, 7168, 2048];
    const x = random(T * K, 1);
    const w = random(N * K, 2);
    const y = new Float32Array(T * N);
    for (const [name, ops] of backends) {
      const times: number[] = [];
      for (let i = 0; i < 4; i++) {
        const t0 = performance.now();
        ops.matmul(x, w, y, T, K, N, threads);
        if (i > 0) times.push(performance.now() - t0);
      }
      const med = median(times);
      const flop = 2 * T * K * N;
      const row: Summary["matmul"][number] = { backend: name, tokens: T, in: K, out: N, medianMs: med, gflops: flop / (med / 1000) / 1e9 };
      const t = ops.device === "cuda" && n ? n.cudaLastTimes() : null;
      if (t) Object.assign(row, { kernelMs: t.kernelMs, kernelGflops: flop / (t.kernelMs / 1000) / 1e9, uploadMs: t.uploadMs, downloadMs: t.downloadMs });
      summary.matmul.push(row);
      console.log(`matmul ${T} x ${K} -> ${N}, ${name}: ${med.toFixed(1)} ms, ${row.gflops.toFixed(1)} GFLOP/s` +
        (t ? ` with copies; kernel alone ${t.kernelMs.toFixed(2)} ms, ${row.kernelGflops!.toFixed(0)} GFLOP/s (upload ${t.uploadMs.toFixed(1)} ms, download ${t.downloadMs.toFixed(1)} ms)` : ""));
    }
  } finally {
    await src.close();
  }
  return ok ? 0 : 1;
}

let code: number;
try {
  code = await main();
} catch (e) {
  summary.error = e instanceof Error ? (e.stack ?? e.message) : String(e);
  console.error(summary.error);
  code = 1;
}
summary.ok = code === 0;
save();
if (outPath) console.log(`wrote ${outPath}`);
process.exit(code);
