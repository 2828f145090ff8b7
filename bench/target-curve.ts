/**
 * Size against mean KLD on tiny-dsv3 (issue 12 item 3): llama.cpp's fixed mixes against
 * `to-gguf --target-size` at the same and at other sizes, each file measured by `deepcast validate`
 * against the FP8 checkpoint (the eval text, llama-perplexity's protocol, ctx 256), all with the shared
 * imatrix (fixtures/llama-cpp-tiny-dsv3/tiny-dsv3.imatrix.gguf). Writes the figures (JSON) and a plot
 * (SVG), and checks the goal: at the exact file size of the IQ2_XXS mix and of the Q4_K_M mix, the
 * --target-size file with --target-measure has at most 0.9x the fixed mix's mean KLD (exit code 1 if not).
 *
 *   npm run build:ts
 *   npx tsx bench/target-curve.ts [--threads 2] [--dir /tmp/deepcast-bench-target] [--sizes 8]
 *                                 [--measure-chunks 16] [--svg bench/target-curve.svg] [--json bench/target-curve.json] [--no-run]
 *
 * Series: the fixed mixes (Q2_K .. Q8_0 and IQ1_S .. IQ4_XS); --target-size with the estimate alone;
 * --target-size with --target-measure (the calibration text fixtures/calibration/, never the eval
 * text; 16 chunks of 256), at the two goal sizes and at --sizes more, spread evenly in log(size)
 * between the smallest and the largest fixed mix. Every file is made by the CLI (`bin/deepcast.js`) as
 * a user makes it. Results are kept in --dir/results.json: a rerun measures only what is missing.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
import { mkdir, rm, writeFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { join, resolve } from "node:path";

const ROOT = resolve(import.meta.dirname, "..");
const BIN = join(ROOT, "bin", "deepcast.js");
const FIXTURE = join(ROOT, "fixtures", "tiny-dsv3");
const IMATRIX = join(ROOT, "fixtures", "llama-cpp-tiny-dsv3", "tiny-dsv3.imatrix.gguf");
const EVAL = join(ROOT, "fixtures", "tiny-dsv3-golden", "eval", "kjv_eval.txt");
const CALIBRATION = join(ROOT, "fixtures", "calibration", "web-jonah-micah-colossians-james.txt");
const argv = process.argv.slice(2);
const opt = (name: string, fallback: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1]! : fallback);
const threads = opt("--threads", String(Math.min(2, availableParallelism())));
const dir = resolve(opt("--dir", "/tmp/deepcast-bench-target"));
const nSizes = Number(opt("--sizes", "8"));
const measureChunks = opt("--measure-chunks", "16");
// --no-run: render what --dir/results.json holds, measuring nothing
const noRun = argv.includes("--no-run");
const svgPath = resolve(opt("--svg", join(ROOT, "bench", "target-curve.svg")));
const jsonPath = resolve(opt("--json", join(ROOT, "bench", "target-curve.json")));
const FIXED = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "Q2_K", "IQ3_XXS", "IQ3_XS", "Q3_K_S", "IQ3_S", "IQ3_M", "Q3_K_M", "Q3_K_L", "IQ4_XS", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0"];
const GOALS = ["IQ2_XXS", "Q4_K_M"];

if (!existsSync(join(ROOT, "dist", "cli", "main.js"))) throw new Error("dist/ is not built: run npm run build:ts first");

interface Point {
  series: "fixed" | "estimate" | "measured";
  label: string;
  bytes: number;
  targetBytes?: number;
  kld: number;
  kldUncertainty: number;
  ppl: number;
  /** --target-measure: the KLD measured on the calibration text, and the seconds the plan took. */
  calibrationKld?: number;
  planSeconds?: number;
  types?: Record<string, { tensors: number; bytes: number }>;
}

await mkdir(dir, { recursive: true });
const resultsFile = join(dir, "results.json");
const results: Record<string, Point> = existsSync(resultsFile) ? JSON.parse(readFileSync(resultsFile, "utf8")) : {};

function deepcast(args: string[]): string {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`deepcast ${args.join(" ")}: exit ${r.status}\n${r.stderr}`);
  return r.stdout;
}

async function point(key: string, series: Point["series"], label: string, args: string[], targetBytes?: number): Promise<Point | undefined> {
  if (results[key] || noRun) return results[key];
  const out = join(dir, `${key}.gguf`);
  const t0 = performance.now();
  const conv = JSON.parse(deepcast(["to-gguf", FIXTURE, "--imatrix", IMATRIX, "-o", out, "--json", "--force", "--threads", threads, ...args]));
  const planSeconds = (performance.now() - t0) / 1000;
  const v = JSON.parse(deepcast(["validate", out, "--reference", FIXTURE, "--tokenizer", FIXTURE, "--text", EVAL, "--ctx", "256", "--json", "--threads", threads]));
  const p: Point = {
    series, label, bytes: statSync(out).size, kld: v.kld.meanKld.value, kldUncertainty: v.kld.meanKld.uncertainty, ppl: v.ppl,
    ...(targetBytes !== undefined ? { targetBytes } : {}),
    ...(conv.target?.measured ? { calibrationKld: conv.target.measured.measuredKld, planSeconds } : {}),
    ...(conv.target ? { types: conv.target.plannedTypes } : {}),
  };
  await rm(out, { force: true });
  await rm(out.replace(/\.gguf$/, ".recipe.txt"), { force: true });
  results[key] = p;
  await writeFile(resultsFile, JSON.stringify(results, null, 1));
  console.log(`${series.padEnd(8)} ${label.padEnd(16)} ${(p.bytes / 1e6).toFixed(3)} MB  mean KLD ${p.kld.toFixed(5)} +/- ${p.kldUncertainty.toFixed(5)}  PPL ${p.ppl.toFixed(3)}` +
    (p.calibrationKld !== undefined ? `  (calibration KLD ${p.calibrationKld.toFixed(5)}, planned in ${planSeconds.toFixed(0)} s)` : ""));
  return p;
}

for (const q of FIXED) await point(q, "fixed", q, ["-q", q]);
const fixedBytes = (q: string) => results[q]!.bytes;
const lo = Math.min(...FIXED.map(fixedBytes));
const hi = Math.max(...FIXED.map(fixedBytes));
const sizes: { label: string; bytes: number }[] = [
  ...GOALS.map((q) => ({ label: `=${q}`, bytes: fixedBytes(q) })),
  ...Array.from({ length: nSizes }, (_, i) => {
    const b = Math.round(Math.exp(Math.log(lo) + ((i + 0.5) / nSizes) * (Math.log(hi) - Math.log(lo))));
    return { label: `${(b / 1e6).toFixed(2)} MB`, bytes: b };
  }),
];
for (const s of sizes) {
  await point(`target-${s.bytes}`, "estimate", s.label, ["--target-size", String(s.bytes)], s.bytes);
  await point(`measured-${s.bytes}`, "measured", s.label, ["--target-size", String(s.bytes), "--target-measure", CALIBRATION, "--target-measure-ctx", "256", "--target-measure-chunks", measureChunks], s.bytes);
}

// the goal
const goal = GOALS.filter((q) => results[`measured-${results[q]!.bytes}`] && results[`target-${results[q]!.bytes}`]).map((q) => {
  const fixed = results[q]!;
  const est = results[`target-${fixed.bytes}`]!;
  const meas = results[`measured-${fixed.bytes}`]!;
  return { mix: q, bytes: fixed.bytes, fixedKld: fixed.kld, estimateKld: est.kld, measuredKld: meas.kld, estimateRatio: est.kld / fixed.kld, measuredRatio: meas.kld / fixed.kld, measuredBytes: meas.bytes, ok: meas.kld <= 0.9 * fixed.kld && meas.bytes <= fixed.bytes && meas.bytes >= 0.97 * fixed.bytes };
});
console.log("\n| size of | bytes | fixed mix KLD | --target-size KLD (estimate) | ratio | --target-size --target-measure KLD | ratio | goal <= 0.9 |");
console.log("|---|---|---|---|---|---|---|---|");
for (const g of goal) {
  console.log(`| ${g.mix} | ${g.bytes} | ${g.fixedKld.toFixed(5)} | ${g.estimateKld.toFixed(5)} | ${g.estimateRatio.toFixed(2)} | ${g.measuredKld.toFixed(5)} | ${g.measuredRatio.toFixed(2)} | ${g.ok ? "met" : "NOT met"} |`);
}

const all = Object.values(results);
await writeFile(jsonPath, JSON.stringify({ text: "fixtures/tiny-dsv3-golden/eval/kjv_eval.txt", ctx: 256, imatrix: "fixtures/llama-cpp-tiny-dsv3/tiny-dsv3.imatrix.gguf", calibration: "fixtures/calibration/web-jonah-micah-colossians-james.txt", goal, points: all }, null, 1) + "\n");
await writeFile(svgPath, plot(all));
console.log(`\nwrote ${svgPath} and ${jsonPath}`);
process.exitCode = goal.length === GOALS.length && goal.every((g) => g.ok) ? 0 : 1;

/** A log-log plot of bytes against mean KLD, hand-written SVG. */
function plot(points: Point[]): string {
  const W = 860, H = 540, L = 80, R = 190, T = 40, B = 60;
  const xs = points.map((p) => p.bytes);
  const ys = points.map((p) => p.kld);
  const x0 = Math.log10(Math.min(...xs) * 0.92), x1 = Math.log10(Math.max(...xs) * 1.08);
  const y0 = Math.floor(Math.log10(Math.min(...ys))), y1 = Math.ceil(Math.log10(Math.max(...ys)));
  const X = (b: number) => L + ((Math.log10(b) - x0) / (x1 - x0)) * (W - L - R);
  const Y = (k: number) => T + (1 - (Math.log10(k) - y0) / (y1 - y0)) * (H - T - B);
  const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${L}" y="22" font-size="15">tiny-dsv3: file size against mean KLD vs BF16 (eval text, ctx 256, shared imatrix)</text>`);
  for (let e = y0; e <= y1; e++) {
    for (const m of [1, 2, 5]) {
      const k = m * 10 ** e;
      if (k < 10 ** y0 || k > 10 ** y1) continue;
      out.push(`<line x1="${L}" x2="${W - R}" y1="${Y(k).toFixed(1)}" y2="${Y(k).toFixed(1)}" stroke="${m === 1 ? "#bbb" : "#eee"}"/>`);
      out.push(`<text x="${L - 6}" y="${(Y(k) + 4).toFixed(1)}" text-anchor="end">${k.toExponential(0)}</text>`);
    }
  }
  for (const mb of [2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30]) {
    const b = mb * 1e6;
    if (Math.log10(b) < x0 || Math.log10(b) > x1) continue;
    out.push(`<line x1="${X(b).toFixed(1)}" x2="${X(b).toFixed(1)}" y1="${T}" y2="${H - B}" stroke="#eee"/>`);
    out.push(`<text x="${X(b).toFixed(1)}" y="${H - B + 16}" text-anchor="middle">${mb}</text>`);
  }
  out.push(`<text x="${(L + W - R) / 2}" y="${H - 16}" text-anchor="middle">file size (MB, log scale)</text>`);
  out.push(`<text x="18" y="${(T + H - B) / 2}" transform="rotate(-90 18 ${(T + H - B) / 2})" text-anchor="middle">mean KLD (nats, log scale)</text>`);
  out.push(`<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#333"/>`);
  const style = { fixed: "#444", estimate: "#1f77b4", measured: "#d62728" } as const;
  for (const s of ["estimate", "measured"] as const) {
    const ps = points.filter((p) => p.series === s).sort((a, b) => a.bytes - b.bytes);
    if (ps.length) out.push(`<polyline fill="none" stroke="${style[s]}" stroke-width="2" points="${ps.map((p) => `${X(p.bytes).toFixed(1)},${Y(p.kld).toFixed(1)}`).join(" ")}"/>`);
    for (const p of ps) out.push(`<circle cx="${X(p.bytes).toFixed(1)}" cy="${Y(p.kld).toFixed(1)}" r="3.5" fill="${style[s]}"/>`);
  }
  // labels alternate above and below their marks (the 3-bit mixes crowd together)
  for (const [i, p] of points.filter((q) => q.series === "fixed").sort((a, b) => a.bytes - b.bytes).entries()) {
    const cx = X(p.bytes), cy = Y(p.kld);
    const iq = p.label.startsWith("IQ");
    out.push(iq
      ? `<rect x="${(cx - 4).toFixed(1)}" y="${(cy - 4).toFixed(1)}" width="8" height="8" fill="none" stroke="${style.fixed}" stroke-width="1.5"/>`
      : `<path d="M${(cx - 4.5).toFixed(1)},${(cy + 4).toFixed(1)} L${cx.toFixed(1)},${(cy - 4.5).toFixed(1)} L${(cx + 4.5).toFixed(1)},${(cy + 4).toFixed(1)} Z" fill="none" stroke="${style.fixed}" stroke-width="1.5"/>`);
    out.push(`<text x="${(cx + 6).toFixed(1)}" y="${(cy + (i % 2 ? 14 : -5)).toFixed(1)}" font-size="10" fill="#444">${esc(p.label)}</text>`);
  }
  const lx = W - R + 14;
  const legend: [string, string][] = [
    ["fixed mix (K-quants: triangles, IQ: squares)", style.fixed],
    ["--target-size (estimate)", style.estimate],
    ["--target-size --target-measure", style.measured],
  ];
  legend.forEach(([t, c], i) => {
    const y = T + 14 + i * 34;
    out.push(`<line x1="${lx}" x2="${lx + 18}" y1="${y}" y2="${y}" stroke="${c}" stroke-width="3"/>`);
    const words = t.split(" ");
    const half = Math.ceil(words.length / 2);
    out.push(`<text x="${lx + 24}" y="${y + 4}" font-size="11">${esc(words.slice(0, half).join(" "))}</text>`);
    out.push(`<text x="${lx + 24}" y="${y + 18}" font-size="11">${esc(words.slice(half).join(" "))}</text>`);
  });
  out.push(`<text x="${lx}" y="${T + 130}" font-size="10" fill="#555">calibration: WEB text,</text>`);
  out.push(`<text x="${lx}" y="${T + 144}" font-size="10" fill="#555">not the eval text</text>`);
  out.push("</svg>");
  return out.join("\n") + "\n";
}
