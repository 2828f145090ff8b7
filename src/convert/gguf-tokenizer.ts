/**
 * The tokenizer metadata llama.cpp's converter writes for a byte-level BPE model (gpt2), from
 * tokenizer.json, tokenizer_config.json and config.json.
 */
import { DeepcastError } from "../errors.js";
import { Keys } from "../formats/gguf-keys.js";
import { kv, type GgufKV } from "../io/gguf-kv.js";
import type { HfModelFiles } from "./hf-model-files.js";
import { isObj, isPyInt, pyEq, truthy } from "./python-compat.js";

/** TextModel._set_vocab_gpt2 + SpecialVocab(load_merges=True).add_to_gguf, from tokenizer.json / tokenizer_config.json / config.json. */
export function tokenizerKvs(files: HfModelFiles, pre: string, vocabSizeCfg: number | undefined): GgufKV[] {
  const tok = files.tokenizer;
  if (!isObj(tok) || !isObj(tok.model)) throw new DeepcastError("tokenizer.json is missing or has no model", { file: "tokenizer.json" });
  const model = tok.model;
  if (model.type !== undefined && model.type !== "BPE") throw new DeepcastError(`tokenizer model ${JSON.stringify(model.type)} is not BPE`, { file: "tokenizer.json" });
  const vocab = isObj(model.vocab) ? (model.vocab as Record<string, number>) : {};
  const added = Array.isArray(tok.added_tokens) ? (tok.added_tokens as Record<string, unknown>[]) : [];
  // transformers get_vocab(): model vocab + added tokens
  const full = new Map<string, number>(Object.entries(vocab));
  const addedByContent = new Map<string, Record<string, unknown>>();
  const addedById = new Map<number, Record<string, unknown>>();
  for (const a of added) {
    if (typeof a.content !== "string" || !isPyInt(a.id)) continue;
    full.set(a.content, a.id);
    addedByContent.set(a.content, a);
    addedById.set(a.id, a);
  }
  let maxId = -1;
  for (const id of full.values()) maxId = Math.max(maxId, id);
  const vocabSize = vocabSizeCfg ?? full.size;
  if (maxId >= vocabSize) throw new DeepcastError(`tokenizer has token id ${maxId}, config vocab_size is ${vocabSize}`, { file: "tokenizer.json" });
  const reverse = new Map<number, string>();
  for (const [t, id] of full) reverse.set(id, t);
  const looksSpecial = (t: string) =>
    ["<pad>", "<mask>", "<2mass>", "[@BOS@]"].includes(t) ||
    (t.startsWith("<|") && t.endsWith("|>")) || (t.startsWith("<｜") && t.endsWith("｜>")) ||
    (t.startsWith("<unused") && t.endsWith(">"));
  const tokens: string[] = [];
  const types: number[] = [];
  for (let i = 0; i < vocabSize; i++) {
    let t = reverse.get(i);
    if (t === undefined) {
      tokens.push(`[PAD${i}]`);
      types.push(5);
      continue;
    }
    if (addedByContent.has(t)) {
      const dec = addedById.get(i) ?? addedByContent.get(t)!;
      if (dec.special === true || looksSpecial(t)) {
        types.push(3);
      } else {
        t = t.replace(/\u2581/g, " ");
        types.push(4);
      }
    } else {
      types.push(1);
    }
    tokens.push(t);
  }
  const out: GgufKV[] = [
    kv.str(Keys.Tokenizer.MODEL, "gpt2"),
    kv.str(Keys.Tokenizer.PRE, pre),
    kv.arr(Keys.Tokenizer.LIST, "STRING", tokens),
    kv.arr(Keys.Tokenizer.TOKEN_TYPE, "INT32", types),
  ];

  // SpecialVocab._try_load_from_tokenizer_json
  let merges: string[] = [];
  const rawMerges = model.merges;
  if (Array.isArray(rawMerges) && rawMerges.length > 0) {
    if (typeof rawMerges[0] === "string") {
      merges = rawMerges as string[];
    } else if (Array.isArray(rawMerges[0]) && rawMerges[0].length === 2 && typeof rawMerges[0][0] === "string") {
      merges = (rawMerges as string[][]).map((pair) => pair.map((p) => p.replace(/ /g, "\u0120")).join(" "));
    } else {
      throw new DeepcastError("unknown tokenizer merges format", { file: "tokenizer.json" });
    }
  }
  const addSpecial = new Map<string, boolean>();
  const specialIds = new Map<string, number>();
  let specialTypes = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];
  let normalizerLowercase: boolean | undefined;
  let normalizerStripAccents: boolean | undefined;
  const parseNormalizer = (n: Record<string, unknown>) => {
    if (n.type === "Lowercase") normalizerLowercase = true;
    else if (n.type === "StripAccents") normalizerStripAccents = true;
    else if (n.type === "BertNormalizer") {
      if ("lowercase" in n) normalizerLowercase = n.lowercase as boolean;
      if ("strip_accents" in n) normalizerStripAccents = n.strip_accents as boolean;
    } else if (n.type === "Sequence" && Array.isArray(n.normalizers)) {
      for (const x of n.normalizers) if (isObj(x)) parseNormalizer(x);
    }
  };
  if (isObj(tok.normalizer)) parseNormalizer(tok.normalizer);
  const tc: Record<string, unknown> | undefined = isObj(files.tokenizerConfig) && truthy(files.tokenizerConfig) ? { ...files.tokenizerConfig } : undefined;
  let specialBos = tc?.bos_token;
  let specialCls = tc?.cls_token;
  let specialEos = tc?.eos_token;
  let specialSep = tc?.sep_token;
  if (!truthy(specialBos) && truthy(specialCls) && tc) tc.bos_token = specialBos = specialCls;
  if (!truthy(specialEos) && truthy(specialSep) && tc) tc.eos_token = specialEos = specialSep;
  const post = tok.post_processor;
  if (isObj(post)) {
    const processors = (Array.isArray(post.processors) ? post.processors : [post]).filter(isObj);
    for (const proc of processors) {
      if (proc.type === "RobertaProcessing") {
        addSpecial.set("bos", true);
        addSpecial.set("eos", true);
        addSpecial.set("sep", true);
        if (!truthy(specialCls) && tc) {
          specialCls = Array.isArray(proc.cls) ? proc.cls[0] : specialBos;
          tc.cls_token = specialCls;
        }
        if (!truthy(specialSep) && tc) {
          specialSep = Array.isArray(proc.sep) ? proc.sep[0] : specialEos;
          tc.sep_token = specialSep;
        }
        continue;
      }
      if (proc.type !== "TemplateProcessing") continue;
      const single = Array.isArray(proc.single) ? (proc.single as Record<string, unknown>[]) : [];
      let pair = Array.isArray(proc.pair) ? (proc.pair as Record<string, unknown>[]) : [];
      const specialId = (x: Record<string, unknown> | undefined): unknown => (isObj(x?.SpecialToken) ? (x.SpecialToken as Record<string, unknown>).id : undefined);
      const seqId = (x: Record<string, unknown> | undefined): unknown => (isObj(x?.Sequence) ? (x.Sequence as Record<string, unknown>).id : undefined);
      let specialFirst: unknown;
      let specialLast: unknown;
      if (single.length > 1) {
        specialFirst = specialId(single[0]);
        if (truthy(specialFirst)) {
          if (!tc) {
            specialBos = specialFirst;
          } else if (!pyEq(specialFirst, specialBos) && !pyEq(specialFirst, specialCls)) {
            if (!truthy(specialBos)) tc.bos_token = specialBos = specialFirst;
            if (!truthy(specialCls)) tc.cls_token = specialCls = specialFirst;
          }
          addSpecial.set("bos", pyEq(specialFirst, specialBos) || pyEq(specialFirst, specialCls));
        }
        specialLast = specialId(single[single.length - 1]);
        if (truthy(specialLast)) {
          if (!tc) {
            specialEos = specialLast;
          } else if (!pyEq(specialLast, specialEos)) {
            if (!specialTypes.includes("eot")) {
              specialTypes = [...specialTypes, "eot"];
              tc.eot_token = specialEos;
            } else if (!specialTypes.includes("eom")) {
              specialTypes = [...specialTypes, "eom"];
              tc.eom_token = specialEos;
            }
            tc.eos_token = specialEos = specialLast;
          }
          addSpecial.set("eos", pyEq(specialLast, specialEos));
        }
      }
      if (pair.length > 0) {
        const seqStart = truthy(specialFirst) && pyEq(specialId(pair[0]), specialFirst) ? 1 : 0;
        const seqStop = truthy(specialLast) && pyEq(specialId(pair[pair.length - 1]), specialLast) ? pair.length - 1 : pair.length;
        pair = pair.slice(seqStart, seqStop);
        if (pair.length > 0) {
          const a = seqId(pair[0]);
          const b = seqId(pair[pair.length - 1]);
          if (a === "A" && b === "B" && pair.length > 2) {
            const mid = pair.slice(1, -1);
            let addSep = false;
            const e1 = specialId(mid[0]);
            if (truthy(e1) && (pyEq(e1, specialSep) || pyEq(e1, specialEos)) && !truthy(specialLast)) addSep = true;
            if (mid.length === 2) {
              const e2 = specialId(mid[1]);
              if (truthy(e2) && (pyEq(e2, specialSep) || pyEq(e2, specialEos))) addSep = true;
            }
            addSpecial.set("sep", addSep);
            if (addSep && !truthy(specialSep) && tc) tc.sep_token = specialEos;
          }
        }
      }
    }
  }
  const setSpecial = (typ: string, tid: unknown) => {
    if (!isPyInt(tid)) return;
    if (tid < 0) throw new DeepcastError(`invalid value for special token type ${typ}: ${tid}`);
    if (!specialIds.has(typ)) specialIds.set(typ, tid);
  };
  let chatTemplate: unknown;
  if (tc) {
    let alt: unknown;
    if (files.chatTemplateJinja !== undefined) alt = files.chatTemplateJinja;
    else if (isObj(files.chatTemplateJson)) alt = files.chatTemplateJson.chat_template;
    const ct = "chat_template" in tc ? tc.chat_template : alt;
    if (ct === null || ct === undefined || typeof ct === "string" || Array.isArray(ct)) chatTemplate = ct;
    for (const typ of specialTypes) {
      const addEntry = tc[`add_${typ}_token`];
      if (typeof addEntry === "boolean") addSpecial.set(typ, addEntry);
      const entry = tc[`${typ}_token`];
      let content: string;
      if (typeof entry === "string") content = entry;
      else if (isObj(entry) && typeof entry.content === "string") content = entry.content;
      else continue;
      const hit = added.find((x) => x.content === content);
      setSpecial(typ, hit?.id);
    }
  }
  // SpecialVocab._try_load_from_config_json
  for (const typ of specialTypes) {
    let id = files.config[`${typ}_token_id`];
    if ((id === undefined || id === null) && isObj(files.config.text_config)) id = files.config.text_config[`${typ}_token_id`];
    setSpecial(typ, id);
  }

  if (merges.length) out.push(kv.arr(Keys.Tokenizer.MERGES, "STRING", merges));
  const idKeys: Record<string, string> = {
    bos: Keys.Tokenizer.BOS_ID, eos: Keys.Tokenizer.EOS_ID, unk: Keys.Tokenizer.UNK_ID,
    sep: Keys.Tokenizer.SEP_ID, pad: Keys.Tokenizer.PAD_ID, mask: Keys.Tokenizer.MASK_ID,
    eot: Keys.Tokenizer.EOT_ID, eom: Keys.Tokenizer.EOM_ID,
  };
  for (const [typ, id] of specialIds) {
    const key = idKeys[typ];
    if (key) out.push(kv.u32(key, id));
  }
  const addKeys: Record<string, string> = { bos: Keys.Tokenizer.ADD_BOS, eos: Keys.Tokenizer.ADD_EOS, sep: Keys.Tokenizer.ADD_SEP };
  for (const [typ, v] of addSpecial) {
    const key = addKeys[typ];
    if (key) out.push(kv.bool(key, v));
  }
  if (typeof chatTemplate === "string") {
    if (chatTemplate.length > 0) out.push(kv.str(Keys.Tokenizer.CHAT_TEMPLATE, chatTemplate));
  } else if (Array.isArray(chatTemplate)) {
    let def: string | undefined;
    const names: string[] = [];
    for (const choice of chatTemplate) {
      if (!isObj(choice)) continue;
      const n = String(choice.name ?? "").replace(/[^A-Za-z0-9]/g, "_");
      const tmpl = choice.template;
      if (n && typeof tmpl === "string") {
        if (n === "default") def = tmpl;
        else {
          if (!names.includes(n)) names.push(n);
          if (tmpl.length > 0) out.push(kv.str(Keys.Tokenizer.CHAT_TEMPLATE_N.replace("{name}", n), tmpl));
        }
      }
    }
    if (names.length) out.push(kv.arr(Keys.Tokenizer.CHAT_TEMPLATES, "STRING", names));
    if (def !== undefined && def.length > 0) out.push(kv.str(Keys.Tokenizer.CHAT_TEMPLATE, def));
  }
  if (normalizerLowercase !== undefined) out.push(kv.bool(Keys.Tokenizer.NORMALIZER_LOWERCASE, normalizerLowercase));
  if (normalizerStripAccents !== undefined) out.push(kv.bool(Keys.Tokenizer.NORMALIZER_STRIP_ACCENTS, normalizerStripAccents));
  return out;
}
