/**
 * Where the residual difference between `deepcast imatrix` and llama-imatrix on the fixture comes from:
 * the same statistics from llama.cpp's own BF16 GGUF, once with our float32 forward pass and once with
 * every matmul input rounded to BF16 first, as ggml's CPU backend does for a BF16 weight (it converts
 * src1 to the weight's vec_dot_type; the router `ffn_gate_inp`, F32 in the GGUF, keeps F32 inputs).
 * The collected x² are of the unrounded inputs in both cases, as in llama-imatrix. Compared with
 * llama-imatrix's file (fixtures/llama-cpp-tiny-dsv3/tiny-dsv3.imatrix.gguf).
 *
 *   npx tsx bench/imatrix-precision.ts [--gguf /work/shared/golden/llama-cpp-tiny-dsv3/tiny-dsv3-BF16.gguf] [--threads 2]
 */
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { encodeImatrixGguf } from "../src/io/imatrix-write.js";
import { parseImatrix } from "../src/io/imatrix.js";
import { forward, type MatmulObserver } from "../src/model/forward.js";
import { GgufWeightSource } from "../src/model/gguf-weights.js";
import { ImatrixCollector } from "../src/model/imatrix-collect.js";
import { planImatrixChunks } from "../src/model/imatrix-run.js";
import { forwardOps, type ForwardOps } from "../src/model/ops.js";
import { compareImatrix } from "../test/imatrix-compare.js";

const ROOT = resolve(import.meta.dirname, "..");
const opt = (name: string, fallback: string) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1]! : fallback);
const gguf = opt("--gguf", "/work/shared/golden/llama-cpp-tiny-dsv3/tiny-dsv3-BF16.gguf");
const threads = Number(opt("--threads", "2"));
const ids = (JSON.parse(readFileSync(join(ROOT, "fixtures", "tiny-dsv3-golden", "eval", "kjv_eval.ids.json"), "utf8")) as { ids: number[] }).ids;
const ref = parseImatrix(readFileSync(join(ROOT, "fixtures", "llama-cpp-tiny-dsv3", "tiny-dsv3.imatrix.gguf")), "llama");

const u32 = new Uint32Array(1);
const f32 = new Float32Array(u32.buffer);
/** Round to nearest even BF16 (finite inputs). */
function bf16(x: Float32Array): Float32Array {
  const y = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    f32[0] = x[i]!;
    const b = u32[0]!;
    u32[0] = ((b + 0x7fff + ((b >>> 16) & 1)) & 0xffff0000) >>> 0;
    y[i] = f32[0];
  }
  return y;
}

const src = await GgufWeightSource.open(gguf, { threads });
const plan = planImatrixChunks(ids, { ctx: 256, bos: src.config.bosTokenId, addBos: true });
for (const mode of ["float32", "bf16 matmul inputs"] as const) {
  const base = forwardOps();
  let round = false;
  const ops: ForwardOps = {
    backend: base.backend,
    matmul: (x, w, y, t, i, o, th, ldy) => base.matmul(mode !== "float32" && round ? bf16(x) : x, w, y, t, i, o, th, ldy),
    attention: base.attention,
    siluMul: base.siluMul,
  };
  const collector = new ImatrixCollector(src.config);
  const observer: MatmulObserver = {
    input(name, x, rows, cols) {
      // the next matmul is this weight's: BF16 in the GGUF except the router (F32)
      round = !name.endsWith(".mlp.gate.weight");
      collector.input(name, x, rows, cols);
    },
    absorbedMla: (l, q, lat, rows) => collector.absorbedMla(l, q, lat, rows),
  };
  await forward(src, plan.sequences.map((s) => s.input), { threads, ops, observer, output: "hidden" });
  const bytes = encodeImatrixGguf({
    entries: collector.stats, datasets: ["text.txt"], chunkCount: collector.chunkCount(256), chunkSize: 256,
  });
  const a = compareImatrix(ref, parseImatrix(bytes, mode));
  const worst = [...a.perTensor].sort((p, q) => q.relL2 - p.relL2)[0]!;
  console.log(`${mode}: mean values rel. L2 max ${a.maxRelL2.toExponential(2)} (${worst.name}), median ${a.medianRelL2.toExponential(2)}; ` +
    `expert counts ${(100 * a.expertCountRelDiff).toFixed(3)}%`);
}
await src.close();
