import { readFile } from "node:fs/promises";
import { GgufWeightSource } from "./src/model/gguf-weights.js";
import { forward } from "./src/model/forward.js";
import { agreement, cpuLlama, fmtAgreement, llamaDistributions, quantile } from "./test/engine-agreement.js";
const W = Number(process.argv[3] ?? 192);
const ids = JSON.parse(await readFile("fixtures/tiny-dsv3-golden/eval/kjv_eval.ids.json", "utf8")).ids as number[];
const windows = [0, 1].map((w) => [0, ...ids.slice(w * (W - 1), (w + 1) * (W - 1))]);
const path = process.argv[2]!;
const llama = await cpuLlama();
const fa = process.argv[4] === "fa";
const P = await llamaDistributions(llama, path, windows, { flashAttention: fa, threads: 2 });
const src = await GgufWeightSource.open(path, { threads: 2 });
const margin = new Float32Array(2 * W).fill(Infinity);
const r = await forward(src, windows, { threads: 2, v4: { qat: false }, onRouting: (ri) => { for (let t = 0; t < ri.tokens; t++) margin[t] = Math.min(margin[t]!, ri.expertMargin[t]!); } });
const a = agreement(P, r);
console.log(fmtAgreement(a));
for (const [lo, hi] of [[0, 17], [17, 36], [36, 64], [64, 127], [127, W]]) {
  const ks: number[] = [];
  for (let w = 0; w < 2; w++) for (let i = lo; i < hi; i++) ks.push(a.kld[w * W + i]!);
  console.log(`positions ${lo}..${hi - 1}: median ${quantile(ks, 0.5).toExponential(2)} mean ${(ks.reduce((x, y) => x + y, 0) / ks.length).toExponential(2)} max ${Math.max(...ks).toExponential(2)}`);
}
console.log(Array.from({length: 20}, (_, i) => a.kld[i]!.toExponential(1)).join(" "));
const big = a.kld.map((k, i) => [k, i, margin[i]] as const).filter(([k]) => k > 1e-2);
console.log(big.map(([k, i, m]) => `${i % W}@w${Math.floor(i / W)}:${k.toExponential(1)}(m ${m!.toExponential(1)})`).join(" "));
console.log("median margin", quantile([...margin], 0.5));
await src.close(); await llama.dispose();
