/**
 * GGUF plans for the real DeepSeek-V4-Flash and V4-Pro, from the sparse full-scale replicas
 * (fixtures/dsv4-replica.ts: the spec's config and tensor headers, no data) through the loader and the
 * planner `deepcast to-gguf --dry-run` uses, beside published figures.
 *
 *   npx tsx bench/full-scale-plan-v4.ts [--dir DIR]   (DIR: a folder for the replicas; default: a temporary one)
 *
 * References (/work/shared/specs/deepseek-v32-v4.md §5.3-5.4, third-party reports): the llama.cpp
 * conversion of Flash has 1328 tensors (1199 non-expert + 129 expert), general.size_label 256x8.4B,
 * file_type 38; 6ms/DeepSeek-V4-Flash-MXFP4-GGUF (native FP8 layout) is 156.1 GB; after llama-quantize
 * MXFP4_MOE about 144 GiB (the spec's calculation). Pro: 1894 tensors (calculation), about 384x30B.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { writeDsv4Replica, type V4Variant } from "../fixtures/dsv4-replica.js";
import { planToGguf } from "../src/convert/to-gguf.js";
import { LocalSource } from "../src/io/source.js";

const PUBLISHED: Record<V4Variant, { tensors: number; convertGB?: number; mxfp4MoeGiB?: number; sizeLabel: string }> = {
  flash: { tensors: 1328, convertGB: 156.1, mxfp4MoeGiB: 144, sizeLabel: "256x8.4B" },
  pro: { tensors: 1894, sizeLabel: "384x30B" },
};

const { values } = parseArgs({ options: { dir: { type: "string" } } });
const tmp = values.dir ? undefined : await mkdtemp(join(tmpdir(), "deepcast-v4-full-scale-"));
const root = values.dir ? resolve(values.dir) : tmp!;
try {
  for (const variant of ["flash", "pro"] as const) {
    const dir = join(root, variant === "flash" ? "DeepSeek-V4-Flash" : "DeepSeek-V4-Pro");
    const rep = await writeDsv4Replica(dir, { variant });
    console.log(`${dir}: ${rep.shards.length} shards, ${rep.tensors.length} HF tensors, ${(rep.totalSize / 1e9).toFixed(1)} GB of tensor data (sparse)`);
    const p = PUBLISHED[variant];
    for (const quant of ["BF16", "MXFP4_MOE", "Q8_0", "Q4_K_M", "IQ2_XXS"]) {
      const t0 = performance.now();
      const plan = await planToGguf(new LocalSource(dir), join(dir, "out.gguf"), { ftype: quant, dryRun: true, hasImatrix: quant.startsWith("IQ") });
      const s = (performance.now() - t0) / 1000;
      const label = plan.output.kvs.find((k) => k.key === "general.size_label")?.value;
      const types = new Map<string, number>();
      for (const t of plan.output.tensors) types.set(t.type.name, (types.get(t.type.name) ?? 0) + 1);
      const ref = quant === "BF16" ? `published ${p.tensors} tensors${p.convertGB ? `, ${p.convertGB} GB` : ""}, ${p.sizeLabel}`
        : quant === "MXFP4_MOE" && p.mxfp4MoeGiB ? `spec ~${p.mxfp4MoeGiB} GiB` : "";
      console.log(
        `  ${(quant === "BF16" ? "convert" : quant).padEnd(9)} ${String(plan.layout.tensorCount).padStart(5)} tensors ${(plan.layout.totalBytes / 1e9).toFixed(2).padStart(8)} GB ` +
          `${(plan.layout.totalBytes / 2 ** 30).toFixed(2).padStart(8)} GiB  file_type ${plan.output.fileType}  ${label}  planned in ${s.toFixed(1)} s` +
          `  [${[...types].map(([k, v]) => `${k} x${v}`).join(", ")}]${ref ? `  (${ref})` : ""}`,
      );
    }
  }
} finally {
  if (tmp) await rm(tmp, { recursive: true, force: true });
}
