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
}

export function deepseek2Format(): Deepseek2Format {
  return readFormat<Deepseek2Format>("deepseek2-gguf.json");
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
