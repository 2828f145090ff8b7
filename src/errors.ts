/**
 * The kinds of failure deepcast reports. A code is stable: scripts and tests match on it, never on the
 * message. USAGE exits 2 (the command line is wrong); every other code exits 1 (the input, the output
 * place or the machine is wrong).
 */
export const ERROR_CODES = [
  "USAGE", // options that contradict each other, an option given twice, a bad value
  "INVALID_INPUT", // malformed input not covered by a more specific code
  "BAD_HEADER", // a safetensors/GGUF/imatrix header that breaks its format's rules
  "TRUNCATED", // a file shorter than its header says
  "NOT_FOUND", // a file, shard, tensor or key that should be there is not
  "NOT_A_FILE", // a path that exists but is a folder, FIFO, device...
  "CONFIG_MISMATCH", // config.json / GGUF metadata / demo config contradicts the tensors
  "BAD_SCALE", // an FP8 scale of the wrong dtype/shape, or a scale on a non-FP8 weight
  "NON_FINITE", // NaN/Inf in weights or scales, or a non-finite result
  "UNSUPPORTED", // a valid input deepcast does not handle (type, layout, architecture)
  "IMATRIX_MISSING", // a quant type that needs an importance matrix got none (or none for a tensor)
  "OUTPUT_EXISTS", // the output holds something else; --force would replace it
  "OUTPUT_LOCKED", // another run holds the output
  "OUTPUT_IN_INPUT", // the output lies inside the input
  "RESUME_MISMATCH", // a run record from different inputs or options
  "WRITE_FAILED", // a write, sync, rename or mkdir failed (disk full, read-only, too large)
  "NO_SPACE", // the free-space check before starting
  "NATIVE_UNAVAILABLE", // the native addon did not load and the command needs it
  "NETWORK", // the Hugging Face Hub could not be reached or refused
  "INTERRUPTED",
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

export interface ErrorPlace {
  file?: string;
  tensor?: string;
  /** Defaults to INVALID_INPUT. */
  code?: ErrorCode;
}

/** An error a user can act on: it names the file and, where there is one, the tensor. */
export class DeepcastError extends Error {
  readonly file?: string;
  readonly tensor?: string;
  readonly code: ErrorCode;

  constructor(message: string, where: ErrorPlace = {}, options?: { cause?: unknown }) {
    const place = [where.file && `file ${where.file}`, where.tensor && `tensor ${where.tensor}`]
      .filter(Boolean)
      .join(", ");
    super(place ? `${message} (${place})` : message, options);
    this.name = "DeepcastError";
    this.file = where.file;
    this.tensor = where.tensor;
    this.code = where.code ?? "INVALID_INPUT";
  }

  /** The process exit status for this error: 2 for usage, 1 for everything else. */
  get exitStatus(): 1 | 2 {
    return this.code === "USAGE" ? 2 : 1;
  }
}

/** A usage error (exit 2). */
export function usageError(message: string): DeepcastError {
  return new DeepcastError(message, { code: "USAGE" });
}
