/** Text output of `deepcast validate`. */
import { DELTA_P_POINTS, KLD_POINTS, type Estimate, type KldSummary } from "../model/kld-stats.js";

/** llama-perplexity's summary lines for a KLD run (the same labels and printf formats). */
export function formatKldSummary(k: KldSummary): string {
  const f = (v: number, w: number, d: number) => (Number.isFinite(v) ? v.toFixed(d).padStart(w) : String(v).padStart(w));
  const pm = (e: Estimate, w: number, d: number) => `${f(e.value, w, d)} ± ${f(e.uncertainty, w, d)}`;
  const lines = [
    "====== Perplexity statistics ======",
    `Mean PPL(Q)                   : ${pm(k.meanPplQ, 10, 6)}`,
    `Mean PPL(base)                : ${pm(k.meanPplBase, 10, 6)}`,
    `Cor(ln(PPL(Q)), ln(PPL(base))): ${f(k.corLnPplPercent, 6, 2)}%`,
    `Mean ln(PPL(Q)/PPL(base))     : ${pm(k.meanLnPplRatio, 10, 6)}`,
    `Mean PPL(Q)/PPL(base)         : ${pm(k.meanPplRatio, 10, 6)}`,
    `Mean PPL(Q)-PPL(base)         : ${pm(k.meanPplDiff, 10, 6)}`,
    "",
    "====== KL divergence statistics ======",
    `Mean    KLD: ${pm(k.meanKld, 10, 6)}`,
  ];
  const label = (p: string) => (p === "maximum" ? "Maximum" : p === "minimum" ? "Minimum" : p === "median" ? "Median" : `${p.padStart(4)}%`).padEnd(8);
  for (const p of KLD_POINTS) lines.push(`${label(p)}KLD: ${f(k.kld[p], 10, 6)}`);
  lines.push("", "====== Token probability statistics ======", `Mean    Δp: ${f(k.meanDeltaPPercent.value, 6, 3)} ± ${f(k.meanDeltaPPercent.uncertainty, 5, 3)} %`);
  for (const p of DELTA_P_POINTS) lines.push(`${label(p)}Δp: ${f(k.deltaPPercent[p], 6, 3)}%`);
  lines.push("", `RMS Δp    : ${f(k.rmsDeltaPPercent.value, 6, 3)} ± ${f(k.rmsDeltaPPercent.uncertainty, 5, 3)} %`);
  lines.push(`Same top p: ${f(k.sameTopPPercent.value, 6, 3)} ± ${f(k.sameTopPPercent.uncertainty, 5, 3)} %`);
  return lines.join("\n");
}
