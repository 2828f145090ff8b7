/** An error a user can act on: it names the file and, where there is one, the tensor. */
export class DeepcastError extends Error {
  readonly file?: string;
  readonly tensor?: string;

  constructor(message: string, where: { file?: string; tensor?: string } = {}, options?: { cause?: unknown }) {
    const place = [where.file && `file ${where.file}`, where.tensor && `tensor ${where.tensor}`]
      .filter(Boolean)
      .join(", ");
    super(place ? `${message} (${place})` : message, options);
    this.name = "DeepcastError";
    this.file = where.file;
    this.tensor = where.tensor;
  }
}
