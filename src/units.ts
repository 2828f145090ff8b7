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
