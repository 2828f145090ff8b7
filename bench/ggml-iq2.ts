/**
 * Throughput of the IQ2_XXS / IQ2_XS / IQ2_S / IQ1_S / IQ1_M quantizers (native addon, through
 * quantizeRows): MB of float32 input per second at 1 and 2 threads, best of --repeat.
 *
 *   npx tsx bench/ggml-iq2.ts [--mb 4] [--repeat 3] [--types IQ2_XXS,IQ1_S]
 *
 * Input: gaussian rows of 4096 values (sigma 0.02, a fixed seed) and a positive imatrix; the
 * lattice tables are built before timing (a one-time cost per process, printed separately).
 * `DEEPCAST_SIMD=scalar` times the scalar kernels.
 */
import { parseArgs } from "node:util";

import { ggmlRequiresImatrix, quantizeRows } from "../src/quant/ggml.js";

const { values } = parseArgs({ options: { mb: { type: "string", default: "4" }, repeat: { type: "string", default: "3" }, types: { type: "string", default: "IQ2_XXS,IQ2_XS,IQ2_S,IQ1_S,IQ1_M" } } });
const n = 4096;
const rows = Math.max(1, Math.round((Number(values.mb) * 1e6) / (4 * n)));
let seed = 12345;
const rand = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 4294967296;
const x = new Float32Array(rows * n).map(() => (rand() + rand() + rand() + rand() - 2) * 0.02);
const im = new Float32Array(n).map(() => Math.exp(3 * rand() - 1));
const mb = x.byteLength / 1e6;

console.log(`${rows} rows x ${n} (${mb.toFixed(1)} MB of f32), best of ${values.repeat}\n`);
console.log("| type | imatrix | lattice init s | 1 thread MB/s | 1 thread MB per CPU s | 2 threads MB/s |");
console.log("| --- | --- | --- | --- | --- | --- |");
for (const type of values.types!.split(",")) {
  let t0 = performance.now();
  quantizeRows(type, x.subarray(0, n), 1, n, im); // builds the lattice
  const init = (performance.now() - t0) / 1000;
  for (const imatrix of ggmlRequiresImatrix(type) ? [im] : [im, null]) {
    // Wall time, and for 1 thread also the process CPU time (steadier on a shared machine).
    let bestCpu = Infinity;
    const rate = [1, 2].map((threads) => {
      let best = Infinity;
      for (let r = 0; r < Number(values.repeat); r++) {
        t0 = performance.now();
        const c0 = process.cpuUsage();
        quantizeRows(type, x, rows, n, imatrix, threads);
        const c = process.cpuUsage(c0);
        best = Math.min(best, (performance.now() - t0) / 1000);
        if (threads === 1) bestCpu = Math.min(bestCpu, (c.user + c.system) / 1e6);
      }
      return (mb / best).toFixed(2);
    });
    console.log(`| ${type} | ${imatrix ? "yes" : "no"} | ${init.toFixed(2)} | ${rate[0]} | ${(mb / bestCpu).toFixed(2)} | ${rate[1]} |`);
  }
}
