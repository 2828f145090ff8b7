/**
 * gguf-py's naming heuristics: general.name, basename, finetune, version and size label derived from
 * the model folder name and parameter counts, as convert_hf_to_gguf.py (v0.4.0) computes them.
 */
/** str.title() */
function pyTitle(s: string): string {
  let out = "";
  let prevCased = false;
  for (const ch of s) {
    const cased = ch.toLowerCase() !== ch.toUpperCase();
    out += cased ? (prevCased ? ch.toLowerCase() : ch.toUpperCase()) : ch;
    prevCased = cased;
  }
  return out;
}

/** str.islower() */
function pyIsLower(s: string): boolean {
  let cased = false;
  for (const ch of s) {
    if (ch.toLowerCase() !== ch.toUpperCase()) {
      cased = true;
      if (ch !== ch.toLowerCase()) return false;
    }
  }
  return cased;
}

/** gguf-py Metadata.id_to_title. */
export function idToTitle(s: string): string {
  return s.trim().replace(/-/g, " ").split(/\s+/).filter(Boolean)
    .map((w) => (pyIsLower(w) && !/^(v\d+(?:\.\d+)*|\d.*)$/.test(w) ? pyTitle(w) : w)).join(" ");
}

export interface ModelIdComponents {
  name?: string;
  organization?: string;
  basename?: string;
  finetune?: string;
  version?: string;
  sizeLabel?: string;
}

/** gguf-py Metadata.get_model_id_components (the heuristics behind general.name/basename/version/...). */
export function modelIdComponents(modelId: string | undefined, totalParams = 0): ModelIdComponents {
  if (modelId === undefined) return {};
  if (modelId.includes(" ")) return { name: modelId };
  let org: string | undefined;
  let full: string;
  const slash = modelId.indexOf("/");
  if (slash >= 0) {
    org = modelId.slice(0, slash);
    full = modelId.slice(slash + 1);
  } else {
    full = modelId;
  }
  if (org !== undefined && org.length > 0 && org[0] === ".") org = undefined;
  const parts = full.split("-").filter((p) => p.length > 0);
  const types: Set<string>[] = parts.map(() => new Set());
  const isDec = (c: string | undefined) => c !== undefined && /^\d$/.test(c);
  parts.forEach((part0, i) => {
    let part = part0;
    if (/^(v|iter)?\d+([.]\d+)*$/i.test(part)) {
      types[i]!.add("version");
    } else if (/^(i?q\d(_\w)*|b?fp?(16|32))$/i.test(part)) {
      types[i]!.add("type");
      parts[i] = part.toUpperCase();
    } else if (i > 0 && /^(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)$/i.test(part)) {
      part = part.replace(/_/g, ".");
      if (isDec(part[part.length - 1])) part = part.slice(0, -2) + "." + part[part.length - 1] + part[part.length - 2];
      if (part.length > 1 && isDec(part[part.length - 2]) && "kmbt".includes(part[part.length - 1]!)) {
        part = part.slice(0, -1) + part[part.length - 1]!.toUpperCase();
      }
      if (totalParams !== 0) {
        const numStr = part.slice(0, -1);
        const mult = " KMBT".indexOf(part[part.length - 1]!);
        if (/^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$/.test(numStr)) {
          const labelParams = Number(numStr) * Math.pow(1000, mult);
          if ((totalParams < 0 && labelParams < Math.floor(Math.abs(totalParams) / 8)) ||
              (totalParams > 0 && Math.abs(labelParams - totalParams) > Math.floor((7 * totalParams) / 8))) {
            types[i]!.add("finetune");
            part = part.slice(0, -1) + part[part.length - 1]!.toLowerCase();
          }
        }
      }
      if (types[i]!.size === 0) types[i]!.add("size_label");
      parts[i] = part;
    } else if (i > 0 && /^(chat|instruct|vision|lora)$/i.test(part)) {
      types[i]!.add(totalParams < 0 && part.toLowerCase() === "lora" ? "type" : "finetune");
    }
  });
  if (parts.some((p, i) => types[i]!.has("size_label") && /\d/.test(p))) {
    parts.forEach((p, i) => {
      if (types[i]!.has("size_label") && /^\p{L}+$/u.test(p)) types[i]!.delete("size_label");
    });
  }
  let atStart = true;
  parts.forEach((p, i) => {
    const t = types[i]!;
    if (atStart && ((t.size === 0 && /^\p{L}/u.test(p)) || t.has("version"))) {
      t.add("basename");
    } else {
      if (atStart) atStart = false;
      if (t.size === 0) t.add("finetune");
    }
  });
  for (let i = parts.length - 1; i >= 0; i--) {
    const t = types[i]!;
    if (t.has("basename") && t.size > 1) t.delete("basename");
    else break;
  }
  const join = (pred: (t: Set<string>) => boolean, dedupe = false) => {
    let xs = parts.filter((_, i) => pred(types[i]!));
    if (dedupe) xs = [...new Set(xs)];
    return xs.length ? xs.join("-") : undefined;
  };
  let basename = join((t) => t.has("basename"));
  const sizeLabel = join((t) => t.has("size_label"), true);
  const finetune = join((t) => t.has("finetune"));
  const version = join((t) => t.has("version") && !t.has("basename"));
  if (sizeLabel === undefined && finetune === undefined && version === undefined) basename = undefined;
  const out: ModelIdComponents = { name: full };
  if (org !== undefined) out.organization = org;
  if (basename !== undefined) out.basename = basename;
  if (finetune !== undefined) out.finetune = finetune;
  if (version !== undefined) out.version = version;
  if (sizeLabel !== undefined) out.sizeLabel = sizeLabel;
  return out;
}

function pyRound(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** gguf-py utility.model_weight_count_rounded_notation. */
export function roundedParamCount(n: number, minDigits = 2): string {
  let scaled: number;
  let suffix: string;
  if (n > 1e12) { scaled = n * 1e-12; suffix = "T"; }
  else if (n > 1e9) { scaled = n * 1e-9; suffix = "B"; }
  else if (n > 1e6) { scaled = n * 1e-6; suffix = "M"; }
  else { scaled = n * 1e-3; suffix = "K"; }
  const fix = Math.max(minDigits - String(pyRound(scaled)).replace(/^0+/, "").length, 0);
  return `${scaled.toFixed(fix)}${suffix}`;
}

/** gguf-py utility.size_label. */
export function sizeLabel(total: number, shared: number, expert: number, expertCount: number): string {
  return expertCount > 0 ? `${expertCount}x${roundedParamCount(Math.abs(shared) + Math.abs(expert))}` : roundedParamCount(Math.abs(total));
}
