/**
 * `deepcast imatrix` against llama-imatrix (llama.cpp v0.4.0) on the same BF16 GGUF, text, ctx and
 * threads, in one run; and per-layer times at DeepSeek-V3's real shapes, extrapolated to the 671B model.
 *
 *   npx tsx bench/imatrix.ts [--threads 2] [--repeat 3] [--ctx 256]
 *                            [--llama /tmp/llama.cpp-bench/build/bin/llama-imatrix]
 *                            [--gguf /work/shared/golden/llama-cpp-tiny-dsv3/tiny-dsv3-BF16.gguf]
 *                            [--replica-ctx 512] [--no-replica] [--llama-env NAME=VALUE]
 *
 * Part 1 (tiny-dsv3, llama.cpp's own BF16 GGUF, the eval text): both tools run alternately `--repeat`
 * times as whole processes (model load, tokenization, PPL and the file write included, as a user runs
 * them); wall seconds, best and median; ratio deepcast / llama-imatrix; the agreement of the two files.
 *
 * Part 2 (a sparse DeepSeek-V3 replica with 4 layers: 3 dense, 1 MoE; zeros, so the router sends every
 * token to the same 8 experts; compute per token is that of real data, 8 experts per token): one chunk
 * of --replica-ctx tokens through `runImatrix` (no PPL), seconds per layer from the progress callback.
 * Extrapolation to DeepSeek-V3 (3 dense + 58 MoE layers, 200 chunks of 512): per-token-per-layer
 * seconds x tokens x layers; plus reading and dequantizing all 256 experts of every MoE layer once (the
 * replica reads 8), at the FP8->f32 rate measured on the dense layers.
 */
import { spawnSync } from "node:child_process";
import { copyFile, mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { writeDsv3Replica } from "../fixtures/dsv3-replica.js";
import { readImatrix } from "../src/io/imatrix.js";
import { planImatrixChunks, runImatrix } from "../src/model/imatrix-run.js";
import { loadTokenizer } from "../src/model/tokenize.js";
import { HfWeightSource } from "../src/model/weights.js";
import { compareImatrix } from "../test/imatrix-compare.js";
import { readFileSync } from "node:fs";
import { loadavg } from "node:os";

const ROOT = resolve(import.meta.dirname, "..");
const argv = process.argv;
const opt = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1]! : fallback);
const threads = Number(opt("--threads", "2"));
const repeat = Number(opt("--repeat", "3"));
const ctx = opt("--ctx", "256");
const llama = opt("--llama", "/tmp/llama.cpp-bench/build/bin/llama-imatrix");
const gguf = opt("--gguf", "/work/shared/golden/llama-cpp-tiny-dsv3/tiny-dsv3-BF16.gguf");
const replicaCtx = Number(opt("--replica-ctx", "512"));
// e.g. --llama-env OMP_WAIT_POLICY=passive: llama.cpp's OpenMP threads spin while they wait, which on a
// shared machine costs it far more than its work (as in bench/validate-perplexity.ts)
const llamaEnv = argv.includes("--llama-env") ? Object.fromEntries([opt("--llama-env", "").split("=", 2) as [string, string]]) : {};
const FIXTURE = join(ROOT, "fixtures", "tiny-dsv3");
const TEXT = join(ROOT, "fixtures", "tiny-dsv3-golden", "eval", "kjv_eval.txt");

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;
const dir = await mkdtemp(join(tmpdir(), "deepcast-bench-imatrix-"));
console.log(`threads ${threads}, load average ${loadavg().map((x) => x.toFixed(1)).join(" ")} (2 shared vCPUs: figures are noisy)`);
try {
  // ---- part 1: against llama-imatrix
  if (!(await stat(llama).catch(() => null))) {
    console.log(`part 1 skipped: no llama-imatrix at ${llama}`);
  } else {
    await copyFile(TEXT, join(dir, "text.txt"));
    const runs = { llama: [] as number[], deepcast: [] as number[] };
    const cmds = {
      llama: [llama, ["-m", gguf, "-f", "text.txt", "-c", ctx, "-t", String(threads), "-o", "llama.gguf"]],
      deepcast: [process.execPath, [join(ROOT, "bin", "deepcast.js"), "imatrix", gguf, "--tokenizer", FIXTURE, "-f", "text.txt", "-c", ctx,
        "--threads", String(threads), "-o", "ours.gguf", "--force"]],
    } as const;
    for (let i = 0; i < repeat; i++) {
      for (const who of ["llama", "deepcast"] as const) {
        const [bin, args] = cmds[who];
        const t0 = performance.now();
        const r = spawnSync(bin, [...args], { cwd: dir, encoding: "utf8", maxBuffer: 1 << 26, env: who === "llama" ? { ...process.env, ...llamaEnv } : process.env });
        const s = (performance.now() - t0) / 1000;
        if (r.status !== 0) throw new Error(`${who} failed (${r.status}): ${r.stderr.slice(-2000)}`);
        runs[who].push(s);
      }
    }
    console.log("\npart 1: tiny-dsv3 BF16 GGUF, eval text, ctx " + ctx + ", whole process wall seconds");
    console.log("| tool | best s | median s | runs |\n|---|---|---|---|");
    for (const who of ["llama", "deepcast"] as const) {
      console.log(`| ${who === "llama" ? "llama-imatrix" : "deepcast imatrix"} | ${Math.min(...runs[who]).toFixed(2)} | ${median(runs[who]).toFixed(2)} | ${runs[who].map((x) => x.toFixed(2)).join(" ")} |`);
    }
    console.log(`ratio deepcast / llama-imatrix: best ${(Math.min(...runs.deepcast) / Math.min(...runs.llama)).toFixed(2)}, median ${(median(runs.deepcast) / median(runs.llama)).toFixed(2)}`);
    const a = compareImatrix(await readImatrix(join(dir, "llama.gguf")), await readImatrix(join(dir, "ours.gguf")));
    console.log(`agreement with this llama-imatrix build: same names ${a.sameNames}, chunks ${a.chunkCounts.join("/")}, ` +
      `mean values rel. L2 max ${a.maxRelL2.toExponential(2)} median ${a.medianRelL2.toExponential(2)}, expert counts ${(100 * a.expertCountRelDiff).toFixed(3)}%`);
  }

  // ---- part 2: per-layer times at DeepSeek-V3 shapes
  if (!argv.includes("--no-replica")) {
    const rep = join(dir, "rep");
    await writeDsv3Replica(rep, { layers: 4, mtp: false });
    const src = await HfWeightSource.open(rep, { threads });
    const tok = await loadTokenizer(rep, { fallbackBos: src.config.bosTokenId });
    const ids = tok.encode(readFileSync(TEXT, "utf8"));
    const plan = planImatrixChunks(ids, { ctx: replicaCtx, chunks: 1, bos: tok.bosId, addBos: tok.addBos });
    const t: number[] = [];
    let last = performance.now();
    await runImatrix(src, plan, {
      chunksPerBatch: 1, threads, ppl: false,
      onEvent: (e) => {
        // one progress event per decoder layer (done strictly between 0 and the total)
        if (e.kind === "progress" && e.done > 0 && e.done < e.total) {
          const now = performance.now();
          t.push((now - last) / 1000);
          last = now;
        }
      },
    });
    await src.close();
    const cfg = src.config;
    const dense = t.slice(0, 3);
    const moe = t[3]!;
    const denseS = median(dense);
    console.log(`\npart 2: DeepSeek-V3 shapes, 1 chunk of ${replicaCtx} tokens: seconds per layer ${t.map((x) => x.toFixed(2)).join(", ")} (layers 0-2 dense, 3 MoE)`);
    // FP8 -> f32 rate from the dense layers: all of their weights are read and dequantized once
    const denseParams = (cfg.qLoraRank * cfg.dim + cfg.nHeads * (cfg.qkNopeHeadDim + cfg.qkRopeHeadDim) * cfg.qLoraRank +
      (cfg.kvLoraRank + cfg.qkRopeHeadDim) * cfg.dim + cfg.nHeads * (cfg.qkNopeHeadDim + cfg.vHeadDim) * cfg.kvLoraRank +
      cfg.dim * cfg.nHeads * cfg.vHeadDim) + 3 * cfg.interDim * cfg.dim;
    const expertParams = 3 * cfg.moeInterDim * cfg.dim;
    const tokens = 200 * 512;
    const perTokDense = denseS / replicaCtx;
    const perTokMoe = moe / replicaCtx;
    const computeH = (tokens * (3 * perTokDense + 58 * perTokMoe)) / 3600;
    // dequant upper bound: the dense layer's whole time spent on its weights' FP8 -> f32 (rate is then a lower bound)
    const rate = denseParams / denseS;
    const readH = (58 * (cfg.nRoutedExperts - 8) * expertParams) / rate / 3600;
    console.log(`extrapolation to DeepSeek-V3 (61 layers: 3 dense + 58 MoE; 200 chunks of 512 = ${tokens} tokens, all in one pass):`);
    console.log(`  compute ${computeH.toFixed(1)} h (${(perTokDense * 1e3).toFixed(2)} ms/token/dense layer, ${(perTokMoe * 1e3).toFixed(2)} ms/token/MoE layer at ctx ${replicaCtx})`);
    console.log(`  + reading the other 248 experts of each MoE layer once: at most ${readH.toFixed(2)} h (a loose bound: FP8->f32 rate taken as >= ${(rate / 1e6).toFixed(1)} Mparams/s, the dense layers' whole time)`);
    const flops = 2 * denseParams * replicaCtx;
    console.log(`  (matmul rate seen on the dense layers: ${(flops / denseS / 1e9).toFixed(1)} GFLOP/s)`);
    console.log(`  = about ${(computeH + readH).toFixed(1)} h on this CPU (${threads} threads); memory: weights of one layer at a time + activations of the pass`);
  }
} finally {
  await rm(dir, { recursive: true, force: true });
}
