/**
 * Throughput of the IQ3/IQ4/TQ quantizers (native addon, in memory): MB/s of float32 input.
 *
 *   npx tsx bench/ggml-iq-quants.ts [--mb 4] [--repeat 3] [--types IQ3_XXS,IQ3_S,IQ4_NL,IQ4_XS,TQ1_0,TQ2_0]
 *                                   [--threads 1,2] [--out FILE]
 *
 * Input: rows of 7168 values (DeepSeek-V3's hidden size), normal with per-row scale, rounded to BF16
 * (what to-gguf feeds the quantizers), plus an imatrix of 7168 positive weights with a heavy tail
 * (exp of a normal). Each type runs without and, where ggml uses one, with the imatrix; best of
 * --repeat (wall clock, and process CPU seconds, which a busy machine inflates less). --out writes the bytes of every run (type, imatrix, threads) concatenated, so two builds
 * can be compared for identical output with cmp/sha256sum.
 */
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { ggmlQuantType } from "../src/formats/ggml-types.js";
import { quantizeRows } from "../src/quant/ggml.js";

const { values } = parseArgs({
  options: {
    mb: { type: "string", default: "4" },
    repeat: { type: "string", default: "3" },
    types: { type: "string", default: "IQ3_XXS,IQ3_S,IQ4_NL,IQ4_XS,TQ1_0,TQ2_0" },
    threads: { type: "string", default: "1,2" },
    out: { type: "string" },
  },
});

const N = 7168;
const rows = Math.max(1, Math.round((Number(values.mb) * 1e6) / (4 * N)));
let s = 0x12345678;
const rnd = () => {
  s ^= s << 13;
  s >>>= 0;
  s ^= s >>> 17;
  s ^= s << 5;
  s >>>= 0;
  return (s + 0.5) / 4294967296;
};
const gauss = () => Math.sqrt(-2 * Math.log(rnd())) * Math.cos(2 * Math.PI * rnd());
const x = new Float32Array(rows * N);
const bits = new Uint32Array(x.buffer);
for (let r = 0; r < rows; r++) {
  const scale = 0.02 * Math.exp(gauss() * 0.5);
  for (let i = 0; i < N; i++) x[r * N + i] = gauss() * scale;
}
for (let i = 0; i < bits.length; i++) bits[i] = (bits[i]! + 0x7fff + ((bits[i]! >>> 16) & 1)) & 0xffff0000;
const im = new Float32Array(N).map(() => Math.exp(gauss()));

const outputs: Uint8Array[] = [];
console.log(`${rows} x ${N} float32 = ${((rows * N * 4) / 1e6).toFixed(1)} MB, best of ${values.repeat}`);
console.log("| type | imatrix | threads | wall s | MB/s f32 in | cpu s | MB/s per cpu s | sha256 (first 12) |");
console.log("|---|---|---|---|---|---|---|---|");
for (const name of values.types.split(",")) {
  const t = ggmlQuantType(name);
  for (const imatrix of t.imatrix !== "ignored" ? [null, im] : [null]) {
    for (const threads of values.threads.split(",").map(Number)) {
      let best = Infinity, bestCpu = Infinity;
      let out: Uint8Array | undefined;
      for (let k = 0; k < Number(values.repeat); k++) {
        const t0 = process.hrtime.bigint();
        const c0 = process.cpuUsage();
        out = quantizeRows(t, x, rows, N, imatrix, threads);
        const c = process.cpuUsage(c0);
        best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
        bestCpu = Math.min(bestCpu, (c.user + c.system) / 1e6);
      }
      outputs.push(out!);
      const sha = createHash("sha256").update(out!).digest("hex").slice(0, 12);
      const mb = (rows * N * 4) / 1e6;
      console.log(`| ${name} | ${imatrix ? "yes" : "no"} | ${threads} | ${best.toFixed(3)} | ${(mb / best).toFixed(1)} | ${bestCpu.toFixed(3)} | ${(mb / bestCpu).toFixed(1)} | ${sha} |`);
    }
  }
}
if (values.out) writeFileSync(values.out, Buffer.concat(outputs));
