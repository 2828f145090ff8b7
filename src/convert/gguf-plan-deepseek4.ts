/**
 * The tensors `deepcast to-gguf` writes for a DeepSeek-V4 checkpoint (llama.cpp architecture
 * `deepseek4`), decided from config.json and the safetensors headers only, in the order llama.cpp's
 * convert_hf_to_gguf.py (v0.4.0, conversion/deepseek.py DeepseekV4Model) writes them: the generated
 * tensors first (tid2eid tables as I32, then each layer's routed experts repacked to MXFP4), then the
 * checkpoint's tensors in index order. Types are fixed by the source, not by --outtype: FP8 (with an
 * E8M0 `.scale`) -> Q8_0 of the dequantized values, BF16 -> BF16, F32 -> F32, 1-D and norms -> F32.
 * The name map is formats/deepseek4-gguf.json; the metadata is ./gguf-kvs-deepseek4.ts.
 */
import { DeepcastError } from "../errors.js";
import { namePattern } from "../formats/deepseek2-names.js";
import { deepseek4Format } from "../formats/deepseek4-names.js";
import { FP8_BLOCK } from "../formats/fp8.js";
import type { HfModelFiles, HfTensorHeader } from "./hf-model-files.js";
import { configNumber } from "./hf-model-files.js";
import type { GgufModel, GgufModelTensor, GgufTensorSource, HfSourceRef } from "./gguf-plan.js";
import { paramCounts } from "./gguf-plan.js";
import { buildDeepseek4Kvs, type Deepseek4KvOptions } from "./gguf-kvs-deepseek4.js";
import { compareCodePoints } from "./python-compat.js";

/** llama_ftype MOSTLY_MXFP4_MOE: DeepseekV4Model.prepare_tensors sets it whatever --outtype. */
export const FILE_TYPE_MXFP4_MOE = 38;

/** convert's MTP modes: default (trunk only), --mtp (the MTP block only, `mtp-` file), --no-mtp. */
export type MtpMode = "default" | "only" | "none";

export interface Deepseek4PlanOptions extends Deepseek4KvOptions {
  mtp?: MtpMode;
}

export interface Deepseek4GgufModel extends GgufModel {
  hparams: { blockCount: number; nHead: number; nHeadKv: number; nExpert: number; nHashLayers: number; nMainLayers: number };
}

const FP8_DTYPES = new Set(["F8_E4M3", "F8_E5M2"]);

export function planDeepseek4Gguf(files: HfModelFiles, opts: Deepseek4PlanOptions = {}): Deepseek4GgufModel {
  const fmt = deepseek4Format();
  const h = files.config;
  const arch = Array.isArray(h.architectures) ? h.architectures[0] : undefined;
  if (typeof arch !== "string" || !fmt.hfArchitectures.includes(arch)) {
    throw new DeepcastError(`unsupported architecture ${JSON.stringify(arch)}: expected one of ${fmt.hfArchitectures.join(", ")}`, { file: "config.json" });
  }
  const mtpOnly = opts.mtp === "only";
  const nMain = configNumber(h, "num_hidden_layers");
  const nNextn = typeof h.num_nextn_predict_layers === "number" ? h.num_nextn_predict_layers : 0;
  const blockCount = nMain + (mtpOnly ? nNextn : 0);
  const nExpert = configNumber(h, "n_routed_experts");
  const nHash = configNumber(h, "num_hash_layers");
  const skipped: string[] = [];

  // --- index_tensors with filter_tensors: model_tensors in insertion order
  const tensors = new Map<string, { file: string; t: HfTensorHeader }>();
  const textFilter = (name: string) =>
    fmt.textModelFilter.startsWith.some((p) => name.startsWith(p)) || fmt.textModelFilter.contains.some((c) => name.includes(c));
  for (const shard of [...files.shards].sort((a, b) => compareCodePoints(a.file, b.file))) {
    for (const t of [...shard.tensors].sort((a, b) => compareCodePoints(a.name, b.name))) {
      const kept = filterName(t.name);
      if (kept === null) skipped.push(t.name);
      else tensors.set(kept, { file: shard.file, t });
    }
  }
  function filterName(name: string): string | null {
    if (fmt.dropPrefixes.some((p) => name.startsWith(p))) return null;
    if (name.startsWith("mtp.")) {
      if (!mtpOnly) return null;
      const parts = name.split(".");
      const rest = parts.slice(2).join(".");
      if (parts.length < 3 || !/^\d+$/.test(parts[1]!)) throw new DeepcastError("unexpected DeepSeek-V4 MTP tensor", { tensor: name });
      const k = Number(parts[1]);
      if (k >= nNextn) throw new DeepcastError(`MTP layer ${k}, but num_nextn_predict_layers is ${nNextn}`, { tensor: name, file: "config.json" });
      const bid = nMain + k;
      if (fmt.mtp.toRoot.includes(rest)) return rest;
      const nextn = fmt.mtp.toNextn[rest];
      return nextn !== undefined ? `layers.${bid}.${nextn}` : `layers.${bid}.${rest}`;
    }
    if (mtpOnly && !fmt.mtp.keepTrunk.includes(name)) return null;
    if (textFilter(name)) return null;
    // ModelBase.filter_tensors
    let n = name;
    if (n.endsWith("e_score_correction_bias")) n = n.replace("e_score_correction_bias", "e_score_correction.bias");
    if (n.includes("language_model.")) n = n.split("language_model.").join("");
    return n;
  }

  // source dtypes before dequant (_collect_source_dtypes)
  const ref = (name: string): HfSourceRef => {
    const v = tensors.get(name)!;
    return { file: v.file, name: v.t.name, dtype: v.t.dtype, shape: [...v.t.shape] };
  };

  // --- dequant_model: FP8 weights take their `.scale`, which is dropped
  const fp8 = new Map<string, HfSourceRef["scaleInv"]>();
  for (const name of [...tensors.keys()]) {
    if (!name.endsWith(".scale")) continue;
    const w = name.slice(0, -".scale".length) + ".weight";
    const wt = tensors.get(w);
    if (!wt || !FP8_DTYPES.has(wt.t.dtype)) continue;
    const s = tensors.get(name)!;
    const rows = wt.t.shape[0]!;
    const cols = wt.t.shape[1]!;
    const want = [Math.ceil(rows / FP8_BLOCK), Math.ceil(cols / FP8_BLOCK)];
    if (wt.t.shape.length !== 2 || s.t.shape.length !== 2 || s.t.shape[0] !== want[0] || s.t.shape[1] !== want[1]) {
      throw new DeepcastError(`scale ${s.t.name} has shape ${JSON.stringify(s.t.shape)}, expected ${JSON.stringify(want)} for weight ${JSON.stringify(wt.t.shape)}`, { tensor: wt.t.name, file: wt.file });
    }
    fp8.set(w, { file: s.file, name: s.t.name, dtype: s.t.dtype, shape: [...s.t.shape] });
    tensors.delete(name);
  }
  const srcRef = (name: string): HfSourceRef => {
    const r = ref(name);
    const s = fp8.get(name);
    return s ? { ...r, scaleInv: s } : r;
  };

  const out: GgufModelTensor[] = [];
  const seen = new Set<string>();
  const emit = (name: string, shape: number[], source: GgufTensorSource, convertType: string, isFp8 = false) => {
    if (seen.has(name)) throw new DeepcastError("two HF tensors map to the same GGUF tensor", { tensor: name });
    seen.add(name);
    out.push({ name, ne: [...shape].reverse(), shape, source, forceF32: convertType === "F32", fp8: isFp8, convertType });
  };
  const consumed = new Set<string>();

  // --- generate_extra_tensors: hash tables, routed experts (MXFP4), MTP eh_proj
  const hashName = (bid: number) => fmt.hash.hf.replace("{bid}", String(bid));
  const writeHash = !mtpOnly || Array.from({ length: nHash }, (_, b) => tensors.has(hashName(b))).some(Boolean);
  if (writeHash) {
    for (let bid = 0; bid < nHash; bid++) {
      const name = hashName(bid);
      if (!tensors.has(name)) throw new DeepcastError(`hash routing tensor ${name} is missing (num_hash_layers is ${nHash})`, { tensor: name, file: "config.json" });
      const r = ref(name);
      if (r.dtype !== "I64" && r.dtype !== "I32") throw new DeepcastError(`hash routing table must be I64 or I32, found ${r.dtype}`, { tensor: name, file: r.file });
      if (r.shape.length !== 2) throw new DeepcastError(`hash routing table must be 2-D, found shape ${JSON.stringify(r.shape)}`, { tensor: name, file: r.file });
      emit(`blk.${bid}.${fmt.hash.gguf}`, r.shape, { kind: "i32", src: r }, "I32");
      consumed.add(name);
    }
  }
  for (let bid = 0; bid < blockCount; bid++) {
    if (mtpOnly && bid < nMain) continue;
    for (const [proj, gguf] of fmt.experts.expertOrder) {
      const experts: { weight: HfSourceRef; scale: HfSourceRef }[] = [];
      for (let e = 0; e < nExpert; e++) {
        const base = fmt.experts.pattern.replace("{bid}", String(bid)).replace("{xid}", String(e)).replace("{proj}", proj);
        const wn = base.replace("{part}", "weight");
        const sn = base.replace("{part}", "scale");
        if (!tensors.has(wn) || !tensors.has(sn)) {
          throw new DeepcastError(`routed expert tensors ${wn} / .scale are missing (n_routed_experts is ${nExpert})`, { tensor: wn });
        }
        const w = ref(wn);
        const s = ref(sn);
        if (w.dtype !== "I8" && w.dtype !== "U8") {
          throw new DeepcastError(`routed expert weight must be I8 (two FP4 codes per byte), found ${w.dtype}: llama.cpp's converter only takes FP4 experts`, { tensor: wn, file: w.file, code: "UNSUPPORTED" });
        }
        const rows = w.shape[0]!;
        const cols = w.shape[1]! * 2;
        if (w.shape.length !== 2 || cols % 32 !== 0) throw new DeepcastError(`FP4 expert row has ${cols} values, expected a multiple of 32`, { tensor: wn, file: w.file });
        if (s.shape.length !== 2 || s.shape[0] !== rows || s.shape[1] !== cols / 32) {
          throw new DeepcastError(`FP4 scale shape ${JSON.stringify(s.shape)} does not match ${JSON.stringify([rows, cols / 32])}`, { tensor: sn, file: s.file });
        }
        const first = experts[0]?.weight;
        if (first && (first.shape[0] !== w.shape[0] || first.shape[1] !== w.shape[1])) {
          throw new DeepcastError("experts of one layer have different shapes", { tensor: wn, file: w.file });
        }
        experts.push({ weight: w, scale: s });
        consumed.add(wn);
        consumed.add(sn);
      }
      const w0 = experts[0]!.weight;
      emit(`blk.${bid}.${gguf}`, [nExpert, w0.shape[0]!, w0.shape[1]! * 2], { kind: "mxfp4", experts }, "MXFP4");
    }
  }
  const generated: { name: string; parts: HfSourceRef[] }[] = [];
  for (let bid = nMain; bid < blockCount; bid++) {
    const [ep, hp] = fmt.mtp.ehProj.parts.map((p) => `layers.${bid}.${p}`) as [string, string];
    if (!tensors.has(ep) && !tensors.has(hp)) continue;
    if (!tensors.has(ep) || !tensors.has(hp)) throw new DeepcastError(`MTP e/h projection pair of block ${bid} is incomplete`, { tensor: tensors.has(ep) ? hp : ep });
    generated.push({ name: `layers.${bid}.${fmt.mtp.ehProj.hf}`, parts: [srcRef(ep), srcRef(hp)] });
    consumed.add(ep);
    consumed.add(hp);
  }
  for (const n of consumed) tensors.delete(n);

  // --- the remaining tensors (the yielded eh_proj first), through modify_tensors and tensor_force_quant
  const f32Names = fmt.f32.names.map(namePattern);
  const mapName = (name: string): string | null => {
    const root = fmt.root[name];
    if (root !== undefined) return root;
    const m = /^layers\.(\d+)\.(.+)$/.exec(name);
    if (!m) throw new DeepcastError("cannot map this DeepSeek-V4 tensor to a GGUF name", { tensor: name });
    const rest = m[2]!;
    if (rest === fmt.hash.hf.split("{bid}.")[1]) return null; // a tid2eid past num_hash_layers: modify_tensors drops it
    const layer = fmt.layer[rest];
    if (layer === undefined) throw new DeepcastError("cannot map this DeepSeek-V4 tensor to a GGUF name", { tensor: name, file: tensors.get(name)?.file });
    return `blk.${m[1]}.${layer}`;
  };
  const typeOf = (gguf: string, shape: readonly number[], srcDtype: string, isFp8: boolean): string | undefined => {
    const nDims = shape.length;
    let t: string | undefined;
    if (isFp8 && nDims >= 2) t = "Q8_0";
    else if (gguf.endsWith(".nextn.eh_proj.weight")) t = "Q8_0";
    else if (srcDtype === "F32") t = "F32";
    else if (srcDtype === "BF16" && nDims >= 2) t = "BF16";
    if (nDims <= 1 || fmt.f32.nameEndsWith.some((s) => gguf.endsWith(s))) t = "F32";
    if (t === undefined && (f32Names.some((re) => re.test(gguf)) || !fmt.f32.unlessEndsWith.some((s) => gguf.endsWith(s)))) t = "F32";
    // gguf-py's Q8_0 needs whole 32-blocks, else it warns and writes F16
    if (t === "Q8_0" && (shape[shape.length - 1] ?? 0) % 32 !== 0) t = "F16";
    return t;
  };
  const handle = (name: string, shape: number[], source: GgufTensorSource, srcDtype: string, isFp8: boolean) => {
    if (fmt.ignoreSuffixes.some((s) => name.endsWith(s))) return;
    const bidPart = name.split(".").find((p) => /^\d+$/.test(p));
    if (name.endsWith(`.${fmt.dropHashLayerBias}`) && bidPart !== undefined && Number(bidPart) < nHash) {
      skipped.push(name);
      return;
    }
    const gguf = mapName(name);
    if (gguf === null) {
      skipped.push(name);
      return;
    }
    const t = typeOf(gguf, shape, srcDtype, isFp8);
    if (t === undefined) {
      // only an F16 source gets here: it follows --outtype
      if (seen.has(gguf)) throw new DeepcastError("two HF tensors map to the same GGUF tensor", { tensor: gguf });
      seen.add(gguf);
      out.push({ name: gguf, ne: [...shape].reverse(), shape, source, forceF32: false, fp8: isFp8 });
      return;
    }
    emit(gguf, shape, source, t, isFp8);
  };
  for (const g of generated) {
    const [e, hh] = g.parts as [HfSourceRef, HfSourceRef];
    if (e.shape.length !== 2 || hh.shape.length !== 2 || e.shape[0] !== hh.shape[0]) {
      throw new DeepcastError(`MTP e_proj ${JSON.stringify(e.shape)} and h_proj ${JSON.stringify(hh.shape)} cannot be concatenated`, { tensor: e.name, file: e.file });
    }
    handle(g.name, [e.shape[0]!, e.shape[1]! + hh.shape[1]!], { kind: "concat", parts: g.parts }, "F32", true);
  }
  for (const [name, v] of tensors) {
    if (v.t.dtype === "I8" || v.t.dtype === "U8" || v.t.dtype === "F8_E8M0") {
      throw new DeepcastError(`${v.t.dtype} tensor that is no routed expert of a converted layer: llama.cpp's converter cannot map it`, { tensor: name, file: v.file });
    }
    const r = srcRef(name);
    handle(name, r.shape, { kind: "tensor", src: r }, v.t.dtype, r.scaleInv !== undefined);
  }

  const params = paramCounts(out);
  const kvs = buildDeepseek4Kvs(files, opts, params, { blockCount, mtpOnly, arch: fmt.architecture });
  return {
    architecture: fmt.architecture,
    hparams: { blockCount, nHead: configNumber(h, "num_attention_heads"), nHeadKv: configNumber(h, "num_key_value_heads"), nExpert, nHashLayers: nHash, nMainLayers: nMain },
    kvs,
    tensors: out,
    params,
    skipped,
    convertFileType: FILE_TYPE_MXFP4_MOE,
  };
}
