/**
 * The agreement figures of issue 10 item 4 between two GGUF imatrices (ours and llama-imatrix's):
 * per tensor, the relative L2 distance of the mean values in_sum2/counts (matrices whose count is 0
 * in either file left out), its maximum and median over tensors, and for the routed experts the
 * total absolute count difference relative to the total count. Used by the test and bench/imatrix.ts.
 */
import type { Imatrix } from "../src/io/imatrix.js";

export interface ImatrixAgreement {
  sameNames: boolean;
  chunkCounts: [number, number];
  perTensor: { name: string; relL2: number }[];
  maxRelL2: number;
  medianRelL2: number;
  /** Σ|count − count_ref| / Σ count_ref over the expert matrices. */
  expertCountRelDiff: number;
  /** Expert matrices with a count of 0 in one file and not in the other. */
  zeroMismatches: number;
}

export function compareImatrix(ref: Imatrix, ours: Imatrix): ImatrixAgreement {
  const perTensor: { name: string; relL2: number }[] = [];
  let countDiff = 0;
  let countTotal = 0;
  let zeroMismatches = 0;
  for (const [name, re] of ref.entries) {
    const oe = ours.entries.get(name);
    const rr = ref.raw?.get(name);
    const or = ours.raw?.get(name);
    if (!oe || !rr || !or || oe.values.length !== re.values.length || oe.nMat !== re.nMat) continue;
    const rc = rr.counts;
    const oc = or.counts;
    const cols = re.values.length / rc.length;
    let d = 0;
    let s = 0;
    for (let m = 0; m < rc.length; m++) {
      if (rc.length > 1) {
        countDiff += Math.abs(rc[m]! - oc[m]!);
        countTotal += rc[m]!;
      }
      if (rc[m] === 0 || oc[m] === 0) {
        if (rc[m] !== oc[m]) zeroMismatches++;
        continue;
      }
      for (let j = m * cols; j < (m + 1) * cols; j++) {
        d += (re.values[j]! - oe.values[j]!) ** 2;
        s += re.values[j]! ** 2;
      }
    }
    perTensor.push({ name, relL2: s > 0 ? Math.sqrt(d / s) : Math.sqrt(d) });
  }
  const sorted = perTensor.map((t) => t.relL2).sort((a, b) => a - b);
  const n = sorted.length;
  return {
    sameNames: [...ref.entries.keys()].join("\n") === [...ours.entries.keys()].join("\n"),
    chunkCounts: [ref.chunkCount, ours.chunkCount],
    perTensor,
    maxRelL2: n ? sorted[n - 1]! : NaN,
    medianRelL2: n ? (n % 2 ? sorted[(n - 1) / 2]! : (sorted[n / 2 - 1]! + sorted[n / 2]!) / 2) : NaN,
    expertCountRelDiff: countTotal > 0 ? countDiff / countTotal : 0,
    zeroMismatches,
  };
}
