/** Human-readable byte counts (decimal units, as disk vendors and the Hugging Face hub show them). */
export function fmtBytes(n: number): string {
  if (!Number.isFinite(n)) return "unlimited";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 2)} ${units[i]}`;
}

/** Up to `max` names, then how many more: for messages that name what is wrong. */
export function listNames(names: readonly string[], max = 8): string {
  return names.length <= max ? names.join(", ") : `${names.slice(0, max).join(", ")} and ${names.length - max} more`;
}
