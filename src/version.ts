/** The package's version (package.json), for `deepcast --version` and every --json summary. */
import { readFileSync } from "node:fs";

// This module sits one level below the package root, in src/ and in dist/.
export const VERSION: string = (JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }).version;
