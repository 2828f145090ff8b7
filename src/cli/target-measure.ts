/**
 * `to-gguf --target-measure TEXT`: the KLD measurement the size-targeted search calibrates its
 * estimate with (quant/target-calibrate.ts). The input checkpoint is the reference; the text is cut
 * as llama-perplexity cuts it (--target-measure-ctx, at most --target-measure-chunks chunks, second
 * halves scored), and every candidate allocation, made in memory (convert/planned-gguf.ts), runs
 * through the layer-streamed forward pass. Use a text other than the one you evaluate on.
 */
import { readFile } from "node:fs/promises";
import { DeepcastError } from "../errors.js";
import type { GgufTensorStore } from "../io/gguf-reader.js";
import { planProtocol } from "../model/eval-protocol.js";
import { GgufWeightSource } from "../model/gguf-weights.js";
import { KldProbe } from "../model/kld-probe.js";
import { openTokenizer } from "../model/open-tokenizer.js";
import { openWeights } from "../model/open-weights.js";

export interface KldMeasureOptions {
  model: string;
  text: string;
  ctx: number;
  chunks: number;
  threads: number;
  revision?: string;
}

export interface KldMeasure {
  measure: (model: GgufTensorStore) => Promise<number>;
  /** Scored positions per measurement, chunks, and the reference pass's seconds. */
  positions: number;
  chunks: number;
  referenceSeconds: number;
}

export async function kldMeasure(o: KldMeasureOptions): Promise<KldMeasure> {
  const text = await readFile(o.text, "utf8").catch((e: Error) => {
    throw new DeepcastError(`cannot read the --target-measure text: ${e.message}`, { file: o.text });
  });
  const reference = await openWeights(o.model, { threads: o.threads, ...(o.revision !== undefined ? { revision: o.revision } : {}) });
  try {
    const tok = await openTokenizer(o.model, { fallbackBos: reference.config.bosTokenId });
    const ids = tok.encode(text);
    const plan = planProtocol(ids, { protocol: "llama", ctx: o.ctx, chunks: o.chunks, bos: tok.bosId, addBos: tok.addBos });
    const probe = await KldProbe.create(reference, plan.sequences, { threads: o.threads });
    return {
      measure: async (store) => {
        const w = await GgufWeightSource.fromStore(store, { threads: o.threads });
        try {
          return await probe.meanKld(w);
        } finally {
          await w.close();
        }
      },
      positions: probe.positions,
      chunks: plan.sequences.length,
      referenceSeconds: probe.referenceSeconds,
    };
  } finally {
    await reference.close();
  }
}
