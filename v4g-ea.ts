import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { GgufWeightSource } from "./src/model/gguf-weights.js";
import { forward } from "./src/model/forward.js";
import { agreement, cpuLlama, fmtAgreement, llamaDistributions } from "./test/engine-agreement.js";
const W = Number(process.argv[3] ?? 192);
const ids = JSON.parse(await readFile("fixtures/tiny-dsv3-golden/eval/kjv_eval.ids.json", "utf8")).ids as number[];
const windows = [0, 1].map((w) => [0, ...ids.slice(w * (W - 1), (w + 1) * (W - 1))]);
const path = process.argv[2]!;
const llama = await cpuLlama();
let t = Date.now();
const P = await llamaDistributions(llama, path, windows, { flashAttention: false, threads: 2 });
console.log("llama", Date.now() - t, "ms");
const src = await GgufWeightSource.open(path, { threads: 2 });
for (const [label, o] of [["qat off", { qat: false }], ["qat on", {}], ["no inverse rope", { qat: false, skipInverseRope: true }], ["indexer all", { qat: false, indexer: "all" }]] as const) {
  t = Date.now();
  const r = await forward(src, windows, { threads: 2, v4: o as any });
  console.log(label, Date.now() - t, "ms", fmtAgreement(agreement(P, r)));
}
for (const [label, f] of [["routeScale 1", (c: any) => ({ ...c, routeScale: 1 })], ["swiglu 0", (c: any) => ({ ...c, v4: { ...c.v4, swigluLimit: 0 } })]] as const) {
  const s2 = { ...src, config: f(src.config), has: src.has.bind(src), shape: src.shape.bind(src), read: src.read.bind(src), readStored: src.readStored?.bind(src), description: "x", close: async () => {} };
  const r = await forward(s2 as any, windows, { threads: 2, v4: { qat: false } });
  console.log(label, fmtAgreement(agreement(P, r)));
}
await src.close(); await llama.dispose();
