/**
 * Single-thread throughput of the kernels this session's figures name, for this build's addon and,
 * with --baseline, another build's addon measured in the same run (so the ratio is fair on a shared
 * machine): the Q8_0 / Q4_0 reference-row quantizers and the FP8 -> float32 decode with BF16 rounding
 * on 128 x 2048 values in cache, and causal attention on the fixture's shapes (29 sequences of 256,
 * 4 heads, q.k over 48 dims, values of 32 and of 512).
 *
 *   npx tsx bench/kernels.ts [--baseline /other/checkout/build/Release/deepcast_native.node] [--repeat 5]
 *
 * Prints G values per second (quantizers, decode) and CPU ms per call (attention), best of --repeat.
 */
import { createRequire } from "node:module";
import { resolve } from "node:path";
import { loadAddon, type NativeAddon } from "../src/quant/native.js";
import { ggmlQuantType } from "../src/formats/ggml-types.js";
import { random } from "../test/numeric.js";

const argv = process.argv;
const opt = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1]! : fallback);
const repeat = Number(opt("--repeat", "5"));
const builds: [string, NativeAddon][] = [["this build", loadAddon()]];
// An older build lacks newer entry points, which loadAddon refuses; only the ones used here are needed.
if (argv.includes("--baseline")) builds.push(["baseline", createRequire(import.meta.url)(resolve(opt("--baseline", ""))) as NativeAddon]);

function cpuMs(f: () => void): number {
  f();
  let best = Infinity;
  for (let i = 0; i < repeat; i++) {
    const c = process.cpuUsage();
    f();
    const u = process.cpuUsage(c);
    best = Math.min(best, (u.user + u.system) / 1000);
  }
  return best;
}

const rows = 128, cols = 2048, n = rows * cols;
const x = random(n, 7);
const fp8 = Uint8Array.from({ length: n }, (_, i) => (i * 37) & 0x7e); // no NaN codes
const scale = new Float32Array((rows / 128) * (cols / 128)).fill(0.01);
const S = 29, L = 256, H = 4, dqk = 48, N = S * L;
const q = random(N * H * dqk, 1), k = random(N * H * dqk, 2);
const offsets = Int32Array.from({ length: S + 1 }, (_, i) => i * L);

console.log("| kernel | " + builds.map(([b]) => b).join(" | ") + " |\n|---|" + builds.map(() => "---|").join(""));
const row = (name: string, f: (a: NativeAddon) => string) => console.log(`| ${name} | ${builds.map(([, a]) => f(a)).join(" | ")} |`);
for (const t of ["Q8_0", "Q4_0"]) {
  const id = ggmlQuantType(t).id;
  row(`${t} quantize, G values/s`, (a) => {
    const dst = new Uint8Array(rows * a.ggmlRowBytes(id, cols));
    return (n / cpuMs(() => a.ggmlQuantize(id, x, rows, cols, dst, null, 1)) / 1e6).toFixed(2);
  });
}
row("FP8 -> f32 (BF16-rounded), G values/s", (a) => {
  const out = new Float32Array(n);
  return (n / cpuMs(() => a.fp8ToF32(fp8, rows, cols, scale, out, 1, true)) / 1e6).toFixed(2);
});
for (const dv of [32, 512]) {
  const v = random(N * H * dv, 3), o = new Float32Array(N * H * dv);
  row(`attention dv ${dv}, CPU ms`, (a) => cpuMs(() => a.causalAttention(q, k, v, o, offsets, H, dqk, dv, 0.1, 1)).toFixed(1));
}
