/** The manifest.json schema of ggml's quantizer golden vectors (fixtures/ggml-quants/, fixtures/ggml-quants-iq/). */
export interface GoldenCase {
  id: string;
  /** ggml_type_name ("q4_K", "iq2_xxs"). */
  type: string;
  /** llama.cpp's upper-case name ("Q4_K", "IQ2_XXS"). */
  type_upper: string;
  ggml_type_id: number;
  block_size: number;
  type_size: number;
  row_bytes: number;
  input_id: string;
  rows: number;
  n_per_row: number;
  imatrix: boolean;
  files: { input: string; imatrix: string | null; expected: string; dequant: string };
  sha256: { input: string; imatrix: string | null; expected: string; dequant: string };
}

export interface GoldenManifest {
  types: Record<string, { id: number; block_size: number; type_size: number; name: string }>;
  imatrix_ignored_by: string[];
  inputs: { id: string; rows: number; n_per_row: number; file: string; imatrix_file: string }[];
  cases: GoldenCase[];
}

/** The IQ/TQ set adds the types ggml's own quantizer asserts an imatrix for. */
export interface GoldenIqManifest extends GoldenManifest {
  ggml_requires_imatrix: string[];
}

/** Float32 values of a file (copied, so the view is aligned). */
export function floatsOf(b: Uint8Array): Float32Array {
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

export const asBytes = (f: Float32Array) => Buffer.from(f.buffer, f.byteOffset, f.byteLength);

/** First differing row, to make a failure readable (rows are independent in ggml). */
export function firstBadRow(got: Uint8Array, want: Uint8Array, rowLen: number): string {
  for (let r = 0; r * rowLen < want.length; r++) {
    const a = Buffer.from(got.subarray(r * rowLen, (r + 1) * rowLen));
    const b = Buffer.from(want.subarray(r * rowLen, (r + 1) * rowLen));
    if (!a.equals(b)) {
      let i = 0;
      while (a[i] === b[i]) i++;
      return `row ${r}, byte ${i} of ${rowLen}: got ${a[i]}, want ${b[i]}`;
    }
  }
  return "lengths differ";
}
