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
