/**
 * `--device cpu|cuda|auto` of the commands that run the forward pass (validate, imatrix): where its
 * matmuls run (src/model/backend.ts). cpu (the default) is the native CPU kernels; cuda requires the
 * CUDA library (bash native/cuda/build.sh) and a GPU and fails with the reason otherwise; auto takes
 * CUDA when both are there and says on stderr why not when it falls back to the CPU.
 */
import type { Argv } from "yargs";
import { selectBackend, type BackendKind, type BackendOps } from "../model/backend.js";

export const DEVICES: readonly BackendKind[] = ["cpu", "cuda", "auto"];

export function withDeviceOption<T>(y: Argv<T>) {
  return y.option("device", {
    choices: DEVICES,
    default: "cpu" as BackendKind,
    describe: "Where the forward pass's matmuls run: cpu; cuda (an NVIDIA GPU through build/cuda/libdeepcast_cuda.so, an error when unusable); auto (CUDA when usable, else the CPU with the reason printed)",
  });
}

/** The forward ops for --device; an unusable cuda is a DeepcastError naming the reason. */
export function deviceOps(device: BackendKind, label: string): BackendOps {
  const ops = selectBackend(device, { required: device === "cuda" });
  if (device === "auto" && ops.reason) process.stderr.write(`${label}: --device auto: running on the CPU (${ops.reason})\n`);
  if (ops.device === "cuda") process.stderr.write(`${label}: matmuls on ${ops.deviceInfo ?? "the GPU"}\n`);
  return ops;
}

/** What the JSON summaries report. */
export function deviceFacts(ops: BackendOps): { device: "cpu" | "cuda"; deviceInfo: string | null } {
  return { device: ops.device, deviceInfo: ops.deviceInfo };
}
