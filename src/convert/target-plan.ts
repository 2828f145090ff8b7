/**
 * `to-gguf --target-size / --target-bpw`: plan a GGUF whose per-tensor types are chosen by
 * quant/target-mix.ts to fit a size at the least estimated damage, then hand the choice to the
 * ordinary planner as exact `--tensor-type` overrides (one `^name$=type` per tensor, which is also
 * the recipe written beside the output). Tensors pinned by the user (--tensor-type, --recipe,
 * --output-tensor-type, --token-embedding-type) keep their types and count as fixed bytes.
 */
import { DeepcastError } from "../errors.js";
import { ggmlNbytes, type GgmlType } from "../formats/ggml-types.js";
import type { Imatrix } from "../io/imatrix.js";
import type { GgufSplitOptions } from "../io/gguf-layout.js";
import type { CheckpointSource } from "../io/source.js";
import type { Kernels } from "../quant/kernels.js";
import { quantMixes, tensorCategory } from "../quant/mix.js";
import { formatRecipe } from "../quant/recipe.js";
import {
  candidateTypes,
  readsPerToken,
  solveTargetMix,
  tensorDamage,
  TARGET_TOLERANCE,
  type TargetTensor,
} from "../quant/target-mix.js";
import type { PlanDescription } from "../io/dry-run.js";
import { calibratedTargetMix, type GroupFit } from "../quant/target-calibrate.js";
import type { GgufTensorStore } from "../io/gguf-reader.js";
import { fmtBytes } from "../units.js";
import type { GgufOutputOptions } from "./gguf-output.js";
import { PlannedGguf } from "./planned-gguf.js";
import { measureErrorTable } from "./target-errors.js";
import { planToGguf, type ToGgufPlan } from "./to-gguf.js";
import type { MtpMode } from "./gguf-plan-deepseek4.js";

export type Target = { bytes: number } | { bpw: number };

export interface TargetPlanOptions extends Omit<GgufOutputOptions, "ftype"> {
  /** general.file_type; default: the ftype named after the type holding the most bytes. */
  ftype?: string | number;
  split?: GgufSplitOptions;
  name?: string;
  imatrix?: Imatrix;
  mtp?: MtpMode;
  target: Target;
  kernels: Kernels;
  /** Skip reading the weights: every estimate is the gaussian stand-in. */
  analyticOnly?: boolean;
  /** Rows sampled per tensor (default 32) and experts of a stack they spread over (default 8). */
  sampleRows?: number;
  sampleExperts?: number;
  onMeasure?: (name: string, index: number, count: number) => void;
  /**
   * Calibrate the estimate by measurement (quant/target-calibrate.ts): scores a model, given as a
   * GGUF store made in memory, by mean KLD against the reference on a calibration text.
   */
  measureKld?: (model: GgufTensorStore) => Promise<number>;
  /** Progress of the measurements. */
  onKld?: (what: string, kld: number, index: number, count: number) => void;
  /** Threads for quantizing the measured allocations (default 1). */
  threads?: number;
}

/** What the measured calibration found (to-gguf --target-measure). */
export interface TargetMeasurement {
  /** KLD with every planned tensor at BF16 (the reference's own rounding). */
  floor: number;
  fits: GroupFit[];
  /** The chosen allocation: the calibrated estimate's KLD and the measured one. */
  predictedKld: number;
  measuredKld: number;
  measurements: number;
  seconds: number;
}

export interface TargetTensorReport {
  name: string;
  ne: number[];
  type: GgmlType;
  bytes: number;
  /** Estimated damage (reads per token x imatrix-weighted NSR); null for a tensor not planned. */
  damage: number | null;
  /** The estimate is the gaussian stand-in (no readable data). */
  analytic: boolean;
  /** The type has no quantizer in this build (only dry runs plan with such types). */
  unwritable: boolean;
  /** Kept by the user's options, or not quantizable. */
  fixed: boolean;
}

export interface TargetReport {
  /** The target in file bytes (for --target-bpw: bits per weight x weights / 8, over all tensor data). */
  targetBytes: number;
  /** What the target constrains: the whole file or tensor data (bpw). */
  measure: "file" | "tensors";
  /** The achieved value of that measure. */
  achievedBytes: number;
  totalDamage: number;
  method: "exact" | "lagrangian";
  /** Tensors whose estimate is the gaussian stand-in. */
  analyticTensors: number;
  plannedTensors: number;
  tensors: TargetTensorReport[];
  /** With measureKld: the calibration (damages are then calibrated KLD shares, in nats). */
  measured?: TargetMeasurement;
  /** `^name$=type` per quantizable tensor: `--recipe` with this reproduces the types. */
  recipe: string;
  seconds: number;
}

/** The llama_ftype conventionally named after a ggml type (the first ftype whose default it is). */
function ftypeOfType(type: GgmlType): string {
  const f = quantMixes().ftypes.find((x) => x.default === type.name);
  if (!f) throw new DeepcastError(`no llama.cpp file type is named after ${type.name}: pass --quant to name the file type`, { code: "USAGE" });
  return f.name;
}

export async function planTargetGguf(source: CheckpointSource, out: string, opts: TargetPlanOptions): Promise<ToGgufPlan & { target: TargetReport }> {
  const started = performance.now();
  const { target, kernels, analyticOnly, sampleRows, sampleExperts, onMeasure, ftype, measureKld, onKld, threads, ...rest } = opts;
  // a first plan, for the tensor list, which tensors are quantizable and what the user pinned
  const base = await planToGguf(source, out, { ...rest, ftype: ftype ?? "Q8_0", dryRun: true });
  const cat = (name: string) => tensorCategory(name);
  const pinned = (t: ToGgufPlan["output"]["tensors"][number]) =>
    !t.mix?.quantizable || t.mix.manual === true ||
    (opts.outputTensorType !== undefined && cat(t.name) === "output") ||
    (opts.tokenEmbeddingType !== undefined && cat(t.name) === "token_embd");
  const free = base.output.tensors.filter((t) => !pinned(t));
  if (free.length === 0) throw new DeepcastError("no tensor is left for --target-size to choose a type for", { code: "USAGE" });
  const hp = base.ckpt.config ?? {};
  const moe = { nExpert: Number(hp.n_routed_experts ?? 0) || 0, topK: Number(hp.num_experts_per_tok ?? 0) || 0, nLayer: Number(hp.num_hidden_layers ?? 1) || 1 };
  const weights = base.imatrix?.weights;
  const cands = free.map((t) => ({ tensor: t, candidates: candidateTypes(t.ne, { hasImatrix: weights?.has(t.name) ?? false, unwritable: (opts.dryRun ?? false) && !measureKld }) }));

  const table = analyticOnly ? new Map() : await measureErrorTable(source, cands, {
    kernels,
    ...(sampleRows !== undefined ? { rows: sampleRows } : {}),
    ...(sampleExperts !== undefined ? { experts: sampleExperts } : {}),
    ...(weights ? { imatrix: weights } : {}),
    ...(onMeasure ? { onTensor: onMeasure } : {}),
  });
  const analytic = new Set<string>(); // "name type" whose estimate is the stand-in
  const problem: TargetTensor[] = cands.map(({ tensor: t, candidates }) => ({
    name: t.name,
    candidates: candidates.map((type) => {
      const d = tensorDamage(type, table.get(t.name)?.byType.get(type.id), readsPerToken(t.name, moe));
      if (d.analytic) analytic.add(`${t.name} ${type.name}`);
      return { type, bytes: ggmlNbytes(type, t.ne, t.name), damage: d.damage };
    }),
  }));

  // what the target constrains, and the bytes outside the planned tensors
  const freeNames = new Set(free.map((t) => t.name));
  const baseFreeBytes = base.layout.files.flatMap((f) => f.tensors).filter((t) => freeNames.has(t.name)).reduce((a, t) => a + t.nbytes, 0);
  const measure: TargetReport["measure"] = "bytes" in target ? "file" : "tensors";
  let targetBytes: number;
  let fixed: number;
  if ("bytes" in target) {
    targetBytes = target.bytes;
    // header, fixed tensors, and at most one alignment's padding per planned tensor
    fixed = base.layout.totalBytes - baseFreeBytes + free.length * base.layout.alignment;
  } else {
    if (!(target.bpw > 0 && Number.isFinite(target.bpw))) throw new DeepcastError(`invalid --target-bpw ${target.bpw}`, { code: "USAGE" });
    const weightsCount = base.output.tensors.reduce((a, t) => a + t.ne.reduce((x, y) => x * y, 1), 0);
    targetBytes = Math.floor((target.bpw * weightsCount) / 8);
    fixed = base.layout.files.flatMap((f) => f.tensors).filter((t) => !freeNames.has(t.name)).reduce((a, t) => a + t.nbytes, 0);
  }
  const measureOf = (p: ToGgufPlan) => measure === "file" ? p.layout.totalBytes : p.layout.files.flatMap((f) => f.tensors).reduce((a, t) => a + t.nbytes, 0);

  let budget = targetBytes - fixed;
  if (budget <= 0) throw new DeepcastError(`the target is too small: the tensors it cannot change and the metadata already take ${fixed} bytes`, { code: "USAGE" });
  // with a measurement: the estimate calibrated per group of tensors, the chosen allocation measured
  let search = problem;
  let measured: TargetMeasurement | undefined;
  let first: ReturnType<typeof solveTargetMix> | undefined;
  let planned: PlannedGguf | undefined;
  const measureTypes = async (types: ReadonlyMap<string, GgmlType>) => measureKld!(planned!.store(new Map(types)));
  if (measureKld) {
    const t0 = performance.now();
    planned = new PlannedGguf(source, base, { kernels, threads: threads ?? 1 });
    try {
      const c = await calibratedTargetMix(problem, budget, measureTypes, onKld ? { onMeasure: onKld } : {});
      search = c.problem;
      first = c.solution;
      measured = { floor: c.floor, fits: c.fits, predictedKld: c.predictedKld, measuredKld: c.measuredKld, measurements: c.measurements, seconds: (performance.now() - t0) / 1000 };
    } catch (e) {
      await planned.close();
      throw e;
    }
  }
  try {
    return await settle();
  } finally {
    await planned?.close();
  }

  async function settle(): Promise<ToGgufPlan & { target: TargetReport }> {
    for (let attempt = 0; ; attempt++) {
      const sol = attempt === 0 && first ? first : solveTargetMix(search, budget);
      const chosen = new Map(sol.choices.map((c) => [c.name, c]));
      const byteShare = new Map<GgmlType, number>();
      for (const c of sol.choices) byteShare.set(c.type, (byteShare.get(c.type) ?? 0) + c.bytes);
      const mainType = [...byteShare].sort((a, b) => b[1] - a[1])[0]![0];
      const overrides = sol.choices.map((c) => ({ name: c.name, type: c.type }));
      const plan = await planToGguf(source, out, {
        ...rest,
        dryRun: opts.dryRun ?? false,
        ftype: ftype ?? ftypeOfType(mainType),
        tensorTypes: [...formatRecipe(overrides).trim().split("\n"), ...(rest.tensorTypes ?? [])],
      });
      const achieved = measureOf(plan);
      if (achieved > targetBytes) {
        if (attempt >= 3) throw new DeepcastError(`internal: the plan takes ${achieved} bytes, over the target ${targetBytes}`);
        budget -= achieved - targetBytes;
        continue;
      }
      if (measured && sol !== first) {
        const t0 = performance.now();
        measured.measuredKld = await measureTypes(new Map(sol.choices.map((c) => [c.name, c.type])));
        measured.measurements++;
        measured.seconds += (performance.now() - t0) / 1000;
      }
      if (achieved < targetBytes * (1 - TARGET_TOLERANCE)) {
        throw new DeepcastError(
          `the target is larger than this model needs: the largest useful types take ${achieved} bytes, more than 3% below the target ${targetBytes}`,
          { code: "USAGE" },
        );
      }
      const placed = new Map(plan.layout.files.flatMap((f) => f.tensors).map((t) => [t.name, t]));
      const tensors = plan.output.tensors.map((t): TargetTensorReport => {
        const c = chosen.get(t.name);
        return { name: t.name, ne: t.ne, type: t.type, bytes: placed.get(t.name)!.nbytes, damage: c ? c.damage : null, analytic: !!c && analytic.has(`${t.name} ${c.type.name}`), fixed: !c, unwritable: !!c && !t.type.quantizer };
      });
      const recipe = formatRecipe(plan.output.tensors.filter((t) => t.mix?.quantizable).map((t) => ({ name: t.name, type: t.type })));
      return {
        ...plan,
        target: {
          targetBytes,
          measure,
          achievedBytes: achieved,
          totalDamage: sol.damage,
          method: sol.method,
          analyticTensors: sol.choices.filter((c) => analytic.has(`${c.name} ${c.type.name}`)).length,
          plannedTensors: free.length,
          tensors,
          ...(measured ? { measured } : {}),
          recipe,
          seconds: (performance.now() - started) / 1000,
        },
      };
    }
  }
}

/** Where the recipe of a planned output goes: `OUT.recipe.txt` beside `OUT.gguf`. */
export function recipePathOf(output: string): string {
  return `${output.endsWith(".gguf") ? output.slice(0, -5) : output}.recipe.txt`;
}

/** The totals of a --target-* plan (without the per-tensor list and the recipe text), with bytes per planned type. */
export function targetSummary(t: TargetReport) {
  const { tensors: _t, recipe: _r, ...rest } = t;
  const byType: Record<string, { tensors: number; bytes: number }> = {};
  for (const x of t.tensors) {
    if (x.fixed) continue;
    const e = (byType[x.type.name] ??= { tensors: 0, bytes: 0 });
    e.tensors++;
    e.bytes += x.bytes;
  }
  return { ...rest, plannedTypes: byType };
}

/** The --dry-run description of a target plan: to-gguf's, with the estimated error per tensor and the target's totals. */
export function describeTarget(d: PlanDescription, t: TargetReport, out: string): PlanDescription {
  const s = targetSummary(t);
  const byName = new Map(t.tensors.map((x) => [x.name, x]));
  const fields = d.fields as { tensors: { name: string; ne: number[]; type: string; bytes: number }[] };
  const tensors = fields.tensors.map((x) => ({ ...x, estimatedError: byName.get(x.name)?.damage ?? null }));
  const line = (x: (typeof tensors)[number]) => {
    const r = byName.get(x.name);
    const est = !r || r.damage === null ? "  (fixed)" : `  err ${r.damage.toExponential(3)}${r.analytic ? "*" : ""}${r.unwritable ? "  (no quantizer in this build)" : ""}`;
    return `${x.name.padEnd(40)} ${JSON.stringify(x.ne).padEnd(22)} ${x.type.padEnd(7)} ${fmtBytes(x.bytes)}${est}`;
  };
  const unwritable = t.tensors.filter((x) => x.unwritable);
  const notes = [
    `target ${fmtBytes(s.targetBytes)} (${s.measure === "file" ? "file size" : "tensor data"}): planned ${fmtBytes(s.achievedBytes)} (${(100 * s.achievedBytes / s.targetBytes).toFixed(2)}% of the target), ` +
      `${s.plannedTensors} tensors chosen (${s.method}), estimated error ${s.totalDamage.toExponential(4)}, in ${s.seconds.toFixed(1)} s`,
    ...(s.analyticTensors > 0
      ? [`* ${s.analyticTensors} of ${s.plannedTensors} tensor(s) got an estimate without their data (all zeros: a sparse file?; --target-analytic; or a type with ` +
        "no quantizer in this build): the type's noise-to-signal ratio on gaussian rows, i.e. from its bits per weight alone"]
      : []),
    ...(unwritable.length > 0
      ? [`${unwritable.length} tensor(s) are planned as ${[...new Set(unwritable.map((x) => x.type.name))].join(", ")}, which this build cannot write yet ` +
        "(dry runs plan with every type; a real run chooses among the types it can write)"]
      : []),
    ...(t.measured ? measuredLines(t.measured) : []),
    `the plan as a recipe: ${recipePathOf(out)} is written with the output (reproduce with --recipe)`,
  ];
  return {
    ...d,
    fields: { ...d.fields, target: s, recipe: t.recipe, tensors },
    lines: [...tensors.map(line), ...d.lines.slice(fields.tensors.length), ...notes],
  };
}

/** What --target-measure found, for the dry-run and run summaries. */
export function measuredLines(m: TargetMeasurement): string[] {
  return [
    `calibrated by measured KLD (--target-measure): ${m.measurements} measurements in ${m.seconds.toFixed(0)} s; errors above are calibrated KLD shares (nats); ` +
      `with every planned tensor at BF16 ${m.floor.toExponential(3)}; the chosen plan: calibrated estimate ${m.predictedKld.toExponential(3)}, measured ${m.measuredKld.toExponential(3)}`,
    `per group, KLD above that = a x (summed estimate)^b: ${m.fits.map((f) => `${f.group} ${f.a.toExponential(2)}^${f.b.toFixed(2)}`).join(", ")}`,
  ];
}
