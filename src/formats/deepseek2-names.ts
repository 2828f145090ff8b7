/**
 * formats/deepseek2-gguf.json: the tensor name map between a DeepSeek-V2/V3 HF checkpoint and
 * llama.cpp's deepseek2 GGUF, read by the to-gguf planner and by the GGUF weight source. Patterns
 * hold `{bid}` (block) and `{xid}` (expert) placeholders.
 */
import { readFormat } from "./load.js";

export interface MapEntry {
  hf: string;
  kind: "copy" | "stack" | "kv_b_split";
  gguf?: string;
  k_b?: string;
  v_b?: string;
  proj?: string;
  skipIfTiedEmbeddings?: boolean;
}

export interface Deepseek2Format {
  architecture: string;
  hfArchitectures: string[];
  tensors: MapEntry[];
  stackOrder: string[];
  ignoreSuffixes: string[];
  dropSuffixes: string[];
  f32: { nameEndsWith: string[]; names: string[]; unlessEndsWith: string[] };
  /**
   * deepseek32 keeps the MTP/NextN layers (deepseek2 drops them): `keepLayers`; what --mtp keeps of the
   * trunk; whether tokenizer_config.json must set add_bos_token (DeepseekV32Model.set_vocab asserts it).
   */
  mtp?: { keepLayers: boolean; trunkForMtpOnly: string[]; requireAddBosToken: boolean };
}

export function deepseek2Format(): Deepseek2Format {
  return readFormat<Deepseek2Format>("deepseek2-gguf.json");
}

/** formats/deepseek32-gguf.json: DeepSeek-V3.2 (deepseek2's map plus the indexer and the kept MTP block). */
export function deepseek32Format(): Deepseek2Format {
  return readFormat<Deepseek2Format>("deepseek32-gguf.json");
}

/** The MLA generations that share the V2/V3 planner, one name map each. */
export function mlaFormats(): Deepseek2Format[] {
  return [deepseek2Format(), deepseek32Format()];
}

/** A name pattern as an anchored regular expression with named groups `bid` and `xid`. */
export function namePattern(p: string): RegExp {
  const esc = p.replace(/[.*+?^$()|[\]\\]/g, "\\$&").replace(/\{bid\}/g, "(?<bid>\\d+)").replace(/\{xid\}/g, "(?<xid>\\d+)");
  return new RegExp(`^${esc}$`);
}

/** `template` with `{bid}` replaced (unchanged when bid is undefined). */
export function fillBid(template: string, bid: string | undefined): string {
  return bid === undefined ? template : template.replace(/\{bid\}/g, bid);
}
