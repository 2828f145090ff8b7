/**
 * GGUF sizes for the real 671B DeepSeek-V3, planned from the sparse full-scale replica
 * (fixtures/dsv3-replica.ts: real config, real tensor headers, no data) with the same planning code
 * `deepcast to-gguf --dry-run` uses, and compared with published llama.cpp quantizations.
 *
 *   npx tsx bench/full-scale-plan.ts [--dir DIR]     (DIR: an existing replica; default: a temporary one)
 *
 * Reference: bartowski/deepseek-ai_DeepSeek-V3-0324-GGUF on the Hugging Face hub (model card table, made
 * with llama.cpp b4944 and an imatrix): Q4_K_M 404.43 GB and Q8_0 713.29 GB, plus Q6_K, Q5_K_M, Q5_K_S
 * and Q4_1 as a cross-check (decimal GB, the parts of each split file summed). V3-0324 has exactly V3's
 * tensor inventory and config, so the sizes are comparable. The imatrix changes values, not these
 * types or sizes.
 *
 * Two layouts are planned per type:
 *  - "current": what to-gguf writes (llama.cpp with MLA absorption: kv_b_proj split into attn_k_b
 *    [128, 512, 128] and attn_v_b [512, 128, 128] per layer, 1086 tensors). attn_k_b rows are 128 wide,
 *    not a multiple of the 256-wide K-quant block, so llama-quantize falls back (Q4_K -> Q5_0).
 *  - "legacy attn_kv_b": the same tensors, but each layer's kv_b_proj kept whole as attn_kv_b
 *    [512, 32768], as convert_hf_to_gguf.py wrote DeepSeek before llama.cpp's MLA change (April 2025),
 *    i.e. when the published V3-0324 files were made (1025 tensors). Its type is the mix's default:
 *    llama-quantize of that time only counted attn_kv_b as an attn_v tensor, it gave it no rule.
 * The MTP layer (61) is skipped in both, as llama.cpp does.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { writeDsv3Replica } from "../fixtures/dsv3-replica.js";
import { planDeepseek2Gguf } from "../src/convert/gguf-plan.js";
import { planGgufOutput, type GgufOutputPlan } from "../src/convert/gguf-output.js";
import { loadHfModelFiles } from "../src/convert/hf-model-files.js";
import { encodeKv } from "../src/io/gguf-kv.js";
import { parseSplitSize, planGgufLayout, type GgufTensorSpec } from "../src/io/gguf-layout.js";
import { LocalSource } from "../src/io/source.js";

/** Published sizes, decimal GB. */
const PUBLISHED: Record<string, number> = {
  Q4_K_M: 404.43,
  Q8_0: 713.29,
  // further rows of the same model card, as a cross-check of the other mixes
  Q6_K: 550.80,
  Q5_K_M: 475.40,
  Q5_K_S: 461.81,
  Q4_1: 419.94,
};
/** Tensor count of the published files (llama.cpp b4944: attn_kv_b not split). */
const PUBLISHED_TENSORS = 1025;

const { values } = parseArgs({ options: { dir: { type: "string" } } });

let dir: string;
let tmp: string | undefined;
if (values.dir) {
  dir = resolve(values.dir);
} else {
  tmp = await mkdtemp(join(tmpdir(), "deepcast-full-scale-"));
  // The folder name gives general.name, as for a real download.
  dir = join(tmp, "DeepSeek-V3");
  await writeDsv3Replica(dir);
}

try {
  const t0 = performance.now();
  const files = await loadHfModelFiles(new LocalSource(dir));
  const model = planDeepseek2Gguf(files);
  const nLayer = model.hparams.blockCount;
  const specs = (out: GgufOutputPlan): GgufTensorSpec[] => out.tensors.map((t) => ({ name: t.name, ne: t.ne, type: t.type }));

  /** attn_k_b + attn_v_b of each layer replaced by one attn_kv_b [kv_lora, n_head * (nope + v)] of the mix's default type. */
  const legacy = (out: GgufOutputPlan): GgufTensorSpec[] => {
    const { nHead, qkNope, vHead, kvLora } = model.hparams;
    const res: GgufTensorSpec[] = [];
    for (const t of out.tensors) {
      if (t.name.endsWith(".attn_v_b.weight")) continue;
      if (t.name.endsWith(".attn_k_b.weight")) {
        res.push({ name: t.name.replace("attn_k_b", "attn_kv_b"), ne: [kvLora, nHead * (qkNope + vHead)], type: out.ftype.defaultType });
      } else {
        res.push({ name: t.name, ne: t.ne, type: t.type });
      }
    }
    return res;
  };

  interface Row { quant: string; layout: string; tensors: number; bytes: number; headerBytes: number; tokenizerKvBytes: number }
  const rows: Row[] = [];
  const notes: string[] = [];
  for (const quant of Object.keys(PUBLISHED)) {
    const out = planGgufOutput(model, { ftype: quant });
    const tokenizerKvBytes = out.kvs.filter((k) => k.key.startsWith("tokenizer.")).reduce((s, k) => s + encodeKv(k).length, 0);
    for (const [layout, list] of [["current (attn_k_b + attn_v_b)", specs(out)], ["legacy attn_kv_b", legacy(out)]] as const) {
      const l = planGgufLayout("/nowhere/model.gguf", out.kvs, list);
      rows.push({ quant, layout, tensors: l.tensorCount, bytes: l.totalBytes, headerBytes: l.files[0]!.dataStart, tokenizerKvBytes });
    }
    const types = new Map<string, number>();
    for (const t of out.tensors) types.set(t.type.name, (types.get(t.type.name) ?? 0) + 1);
    const fallbacks = out.tensors.filter((t) => t.mix?.fallbackFrom).map((t) => `${t.mix!.fallbackFrom!.name}->${t.type.name}`);
    const single = planGgufLayout("/nowhere/model.gguf", out.kvs, specs(out));
    const split = planGgufLayout("/nowhere/model.gguf", out.kvs, specs(out), { maxBytes: parseSplitSize("50G") });
    notes.push(
      `${quant}: tensor types ${[...types].map(([k, v]) => `${k} x${v}`).join(", ")}; ${fallbacks.length} shape fallbacks (${[...new Set(fallbacks)].join(", ") || "none"}); ` +
        `split at 50G: ${split.files.length} files, ${split.totalBytes - single.totalBytes} bytes more than one file`,
    );
  }
  const ms = performance.now() - t0;

  const gb = (n: number) => (n / 1e9).toFixed(3);
  const gib = (n: number) => (n / 2 ** 30).toFixed(3);
  const mb = (n: number) => (n / 1e6).toFixed(2);
  const head = ["quant", "layout", "tensors", "bytes", "GB", "GiB", "metadata MB", "published GB", "ours - published"];
  const table = rows.map((r) => {
    const p = PUBLISHED[r.quant]!;
    return [
      r.quant, r.layout, String(r.tensors), String(r.bytes), gb(r.bytes), gib(r.bytes), mb(r.headerBytes),
      `${p.toFixed(2)} (${PUBLISHED_TENSORS} t.)`, `${((r.bytes - p * 1e9) / 1e6).toFixed(0)} MB`,
    ];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...table.map((r) => r[i]!.length)));
  const line = (cells: string[]) => "| " + cells.map((c, i) => c.padEnd(widths[i]!)).join(" | ") + " |";
  console.log(`DeepSeek-V3 full-scale GGUF plan from ${dir}`);
  console.log(`  ${files.shards.length} shards, ${files.shards.reduce((s, f) => s + f.tensors.length, 0)} HF tensors; ${model.tensors.length} GGUF tensors; ${model.skipped.length} non-scale HF tensors of MTP layer ${nLayer} skipped; planned in ${(ms / 1000).toFixed(1)} s`);
  console.log();
  console.log(line(head));
  console.log("|" + widths.map((w) => "-".repeat(w + 2)).join("|") + "|");
  for (const r of table) console.log(line(r));
  console.log();
  for (const n of notes) console.log(`  ${n}`);
  const tk = rows[0]!.tokenizerKvBytes;
  // Each published size is rounded to 0.01 GB, so published - legacy plan lies in [p - 5 MB, p + 5 MB) - plan;
  // intersecting over all rows bounds what the published files have that the plan lacks.
  let lo = -Infinity;
  let hi = Infinity;
  for (const r of rows.filter((x) => x.layout.startsWith("legacy"))) {
    const p = PUBLISHED[r.quant]! * 1e9;
    lo = Math.max(lo, p - 5e6 - r.bytes);
    hi = Math.min(hi, p + 5e6 - r.bytes);
  }
  console.log(`  published sizes are rounded to 0.01 GB (+-5 MB); Q4_K_M and Q8_0 are the figures of interest, the other rows a cross-check.`);
  console.log(`  all legacy rows together: the published files are ${mb(lo)} to ${mb(hi)} MB larger than the legacy plan.`);
  console.log(`  metadata: tokenizer.* KVs are ${mb(tk)} MB here (the fixture's 2,048-token tokenizer padded with [PAD] tokens to vocab_size 129,280);`);
  console.log(`  the real ~128k-token vocabulary and ~127k merges plausibly account for that remainder (the real tokenizer is not available offline).`);
} finally {
  if (tmp) await rm(tmp, { recursive: true, force: true });
}
