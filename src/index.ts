/**
 * deepcast as a library: `import { quantize, planToGguf, runToGguf } from "deepcast"`.
 *
 * Each command is a plan function (headers only, nothing written) and a run function taking the plan,
 * options and one `onEvent` callback (the typed event stream of ./events.ts); failures are
 * `DeepcastError`s with a stable `code`. The kernels, readers and writers under them are exported too.
 */
export { VERSION } from "./version.js";
export { DeepcastError, ERROR_CODES, type ErrorCode } from "./errors.js";
export type { OnEvent, RunEvent, ProgressUnit } from "./events.js";

// kernels and the ggml type table
export { quantize, dequantize, quantizeRows, dequantizeRows } from "./quant/ggml.js";
export { kernels, type Kernels } from "./quant/kernels.js";
export { ggmlType, ggmlTypes, ggmlQuantTypes, rowBytes, type GgmlType } from "./formats/ggml-types.js";

// sources, readers, writers
export { openSource } from "./io/open-source.js";
export { LocalSource, type CheckpointSource } from "./io/source.js";
export { loadCheckpoint, type Checkpoint } from "./io/checkpoint.js";
export { SafetensorsFile, SafetensorsWriter, readHeader as readSafetensorsHeader } from "./io/safetensors.js";
export { GgufReader, readGgufHeader } from "./io/gguf-reader.js";
export { GgufWriter } from "./io/gguf-writer.js";
export { planGgufLayout } from "./io/gguf-layout.js";
export { readImatrix, parseImatrix, type Imatrix } from "./io/imatrix.js";
export { writeImatrix } from "./io/imatrix-write.js";
export { inspect } from "./io/inspect.js";

// commands
export { planFp8ToBf16, runFp8ToBf16, type Fp8ToBf16Plan, type RunSummary as Fp8ToBf16Summary } from "./convert/fp8-to-bf16.js";
export { planToGguf, runToGguf, type ToGgufPlan, type ToGgufRunOptions, type ToGgufSummary } from "./convert/to-gguf.js";
export { planTargetGguf } from "./convert/target-plan.js";
export { planGgufSource, type GgufSourceOptions, type GgufSourcePlan } from "./convert/gguf-source-plan.js";
export { runGgufSource, type GgufSourceRunOptions } from "./convert/gguf-source-run.js";
export { planToDemo, type DemoPlan } from "./convert/demo-plan.js";
export { planToDemoV4, type DemoPlanV4Options } from "./convert/demo-plan-v4.js";
export { runToDemo, type ToDemoSummary } from "./convert/to-demo.js";
export { openWeights } from "./model/open-weights.js";
export { openTokenizer } from "./model/open-tokenizer.js";
export { forward } from "./model/forward.js";
export { validate, type ValidateResult } from "./model/validate.js";
export { planImatrixChunks, runImatrix } from "./model/imatrix-run.js";
