/**
 * formats/deepseek4-gguf.json: the tensor name map between a DeepSeek-V4 HF checkpoint and llama.cpp's
 * deepseek4 GGUF (plus which tensors the converter drops, generates and renames), read by the to-gguf
 * planner of that generation (src/convert/gguf-plan-deepseek4.ts).
 */
import { readFormat } from "./load.js";

export interface Deepseek4Format {
  architecture: string;
  hfArchitectures: string[];
  dropPrefixes: string[];
  textModelFilter: { startsWith: string[]; contains: string[] };
  /** HF root name -> GGUF name. */
  root: Record<string, string>;
  /** HF name after `layers.{bid}.` -> GGUF name after `blk.{bid}.`. */
  layer: Record<string, string>;
  experts: { pattern: string; expertOrder: [string, string][] };
  hash: { hf: string; gguf: string };
  dropHashLayerBias: string;
  mtp: {
    toRoot: string[];
    toNextn: Record<string, string>;
    ehProj: { parts: [string, string]; hf: string };
    keepTrunk: string[];
  };
  ignoreSuffixes: string[];
  f32: { nameEndsWith: string[]; names: string[]; unlessEndsWith: string[] };
}

export function deepseek4Format(): Deepseek4Format {
  return readFormat<Deepseek4Format>("deepseek4-gguf.json");
}
