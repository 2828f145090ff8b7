/**
 * Chunks for DeepSeek-V4's packed FP4 experts (formats/fp4.ts): FP4 -> BF16 (exact) and the lossless
 * FP4 -> FP8 cast by 128x128 tiles (DeepSeek's cast_e2m1fn_to_e4m3fn). A weight's E8M0 scale (1/16 of
 * its bytes, too large to hold a shard's worth) is read by a zero-output chunk placed right before the
 * weight's own chunks, checked there, and dropped after the weight's last chunk.
 */
import { DeepcastError } from "../errors.js";
import { checkE8m0 } from "../formats/e8m0.js";
import { FP8_BLOCK } from "../formats/fp8.js";
import { FP4_GROUP, FP4_MAX_SCALE_BYTE } from "../formats/fp4.js";
import type { Kernels } from "../quant/kernels.js";
import type { Chunk } from "./pipeline.js";

export interface Fp4Source {
  /** The output tensor the chunks write. */
  tensor: string;
  /** The packed weight [rows, cols/2] and its scale [rows, cols/32]. */
  weight: { file: string; name: string };
  scale: { file: string; name: string };
  rows: number;
  /** Logical columns (twice the packed bytes per row). */
  cols: number;
  /** Messages name files as `${where}/${file}`. */
  where: string;
  allowNonFinite: boolean;
  /** What the refusal of a tile that would round suggests instead (default: BF16 experts, fp8-to-bf16's choice). */
  instead?: string;
  kernels: Kernels;
  threads: number;
  chunkBytes: number;
}

const BF16_INSTEAD = "convert the experts to BF16 instead (without --experts fp8)";

/** A chunk that reads and checks the whole scale into `hold` and writes nothing. */
function scaleChunk(a: Fp4Source, hold: { bytes: Uint8Array | null }): Chunk {
  const length = (a.rows * a.cols) / FP4_GROUP;
  return {
    tensor: a.tensor,
    src: { file: a.scale.file, tensor: a.scale.name, offset: 0, length },
    outBytes: 0,
    convert: (input) => {
      checkE8m0(input, a.cols / FP4_GROUP, { file: `${a.where}/${a.scale.file}`, tensor: a.scale.name }, a.allowNonFinite ? 254 : FP4_MAX_SCALE_BYTE);
      hold.bytes = input.slice();
    },
  };
}

/** Chunks that write the BF16 [rows, cols] values of a packed FP4 weight. */
export function fp4ToBf16Chunks(a: Fp4Source): Chunk[] {
  const hold: { bytes: Uint8Array | null } = { bytes: null };
  const chunks: Chunk[] = [scaleChunk(a, hold)];
  const groups = a.cols / FP4_GROUP;
  const step = Math.max(1, Math.floor(a.chunkBytes / (a.cols / 2)));
  for (let r0 = 0; r0 < a.rows; r0 += step) {
    const n = Math.min(step, a.rows - r0);
    const last = r0 + n >= a.rows;
    chunks.push({
      tensor: a.tensor,
      src: { file: a.weight.file, tensor: a.weight.name, offset: (r0 * a.cols) / 2, length: (n * a.cols) / 2 },
      outBytes: n * a.cols * 2,
      convert: (input, out) => {
        const scale = hold.bytes!.subarray(r0 * groups, (r0 + n) * groups);
        a.kernels.fp4ToBf16(input, n, a.cols, scale, new Uint16Array(out.buffer, out.byteOffset, n * a.cols), a.threads);
        if (last) hold.bytes = null;
      },
    });
  }
  return chunks;
}

/** The E8M0 scale byte of each 128x128 tile of the FP8 cast: the tile's largest group byte minus 6. */
export function fp4TileScales(scale: Uint8Array, rows: number, cols: number): { bytes: Uint8Array; badTile: number } {
  const groups = cols / FP4_GROUP;
  const tilesR = Math.ceil(rows / FP8_BLOCK);
  const tilesC = Math.ceil(cols / FP8_BLOCK);
  const per = FP8_BLOCK / FP4_GROUP;
  const bytes = new Uint8Array(tilesR * tilesC);
  let badTile = -1;
  for (let tr = 0; tr < tilesR; tr++) {
    for (let tc = 0; tc < tilesC; tc++) {
      let emax = 0;
      for (let r = tr * FP8_BLOCK; r < Math.min(rows, (tr + 1) * FP8_BLOCK); r++) {
        for (let g = tc * per; g < Math.min(groups, (tc + 1) * per); g++) emax = Math.max(emax, scale[r * groups + g]!);
      }
      if (emax < 6 && badTile < 0) badTile = tr * tilesC + tc;
      bytes[tr * tilesC + tc] = Math.max(0, emax - 6);
    }
  }
  return { bytes, badTile };
}

/** Why tile `tile` of a weight cannot be cast to FP8 exactly (the first offending group). */
function tileError(a: Fp4Source, scale: Uint8Array, packed: Uint8Array, row0: number, tile: number): DeepcastError {
  const groups = a.cols / FP4_GROUP;
  const tilesC = Math.ceil(a.cols / FP8_BLOCK);
  const tr = Math.floor(tile / tilesC);
  const tc = tile % tilesC;
  const per = FP8_BLOCK / FP4_GROUP;
  let emax = 0;
  const rows = [tr * FP8_BLOCK, Math.min(a.rows, (tr + 1) * FP8_BLOCK)] as const;
  for (let r = rows[0]; r < rows[1]; r++) for (let g = tc * per; g < Math.min(groups, (tc + 1) * per); g++) emax = Math.max(emax, scale[r * groups + g]!);
  let why = `its largest scale byte ${emax} is below 6, so the tile scale 2^(${emax}-6-127) has no E8M0 byte`;
  outer: for (let r = rows[0]; r < rows[1]; r++) {
    for (let g = tc * per; g < Math.min(groups, (tc + 1) * per); g++) {
      const e = scale[r * groups + g]!;
      if (emax - e <= 14) continue;
      const off = ((r - row0) * a.cols + g * FP4_GROUP) / 2;
      if (packed.subarray(off, off + FP4_GROUP / 2).some((b) => (b & 0x77) !== 0)) {
        why = `row ${r}, elements ${g * FP4_GROUP}..${g * FP4_GROUP + FP4_GROUP - 1} have scale byte ${e}, ${emax - e} below the tile's ${emax} (at most 14 keeps every value exact), and nonzero codes that would round`;
        break outer;
      }
    }
  }
  return new DeepcastError(`the FP4 -> FP8 cast of 128x128 tile [${tr}, ${tc}] would not be lossless: ${why}; ${a.instead ?? BF16_INSTEAD}`,
    { file: `${a.where}/${a.weight.file}`, tensor: a.weight.name, code: "UNSUPPORTED" });
}

/** Chunks that write the e4m3fn codes [rows, cols] of the lossless FP4 -> FP8 cast, by whole tile rows. */
export function fp4ToFp8Chunks(a: Fp4Source): Chunk[] {
  const hold: { bytes: Uint8Array | null } = { bytes: null };
  const chunks: Chunk[] = [scaleChunk(a, hold)];
  const groups = a.cols / FP4_GROUP;
  const tilesC = Math.ceil(a.cols / FP8_BLOCK);
  const step = Math.max(1, Math.floor(a.chunkBytes / ((a.cols / 2) * FP8_BLOCK))) * FP8_BLOCK;
  for (let r0 = 0; r0 < a.rows; r0 += step) {
    const n = Math.min(step, a.rows - r0);
    const last = r0 + n >= a.rows;
    chunks.push({
      tensor: a.tensor,
      src: { file: a.weight.file, tensor: a.weight.name, offset: (r0 * a.cols) / 2, length: (n * a.cols) / 2 },
      outBytes: n * a.cols,
      convert: (input, out) => {
        const all = hold.bytes!;
        const bad = a.kernels.fp4ToFp8(input, n, a.cols, all.subarray(r0 * groups, (r0 + n) * groups), out, a.threads);
        if (bad >= 0) throw tileError(a, all, input, r0, (r0 / FP8_BLOCK) * tilesC + bad);
        if (last) hold.bytes = null;
      },
    });
  }
  return chunks;
}

/** The chunk that writes the FP8 cast's E8M0 tile scales [ceil(rows/128), ceil(cols/128)] from the FP4 scale. */
export function fp4TileScaleChunk(a: Omit<Fp4Source, "kernels" | "threads" | "chunkBytes">): Chunk {
  const tiles = Math.ceil(a.rows / FP8_BLOCK) * Math.ceil(a.cols / FP8_BLOCK);
  return {
    tensor: a.tensor,
    src: { file: a.scale.file, tensor: a.scale.name, offset: 0, length: (a.rows * a.cols) / FP4_GROUP },
    outBytes: tiles,
    convert: (input, out) => {
      checkE8m0(input, a.cols / FP4_GROUP, { file: `${a.where}/${a.scale.file}`, tensor: a.scale.name }, a.allowNonFinite ? 254 : FP4_MAX_SCALE_BYTE);
      const { bytes, badTile } = fp4TileScales(input, a.rows, a.cols);
      if (badTile >= 0) {
        const tilesC = Math.ceil(a.cols / FP8_BLOCK);
        throw new DeepcastError(`the FP4 -> FP8 cast of 128x128 tile [${Math.floor(badTile / tilesC)}, ${badTile % tilesC}] would not be lossless: its largest scale byte is below 6, so the tile scale has no E8M0 byte; ${a.instead ?? BF16_INSTEAD}`,
          { file: `${a.where}/${a.scale.file}`, tensor: a.scale.name, code: "UNSUPPORTED" });
      }
      out.set(bytes);
    },
  };
}
