// Bundle the page into grpcchat/web/static/ (or --out DIR): app.js (src/main.ts and everything it
// imports, generated code and @connectrpc included, minified), app.css, index.html.
// Deterministic: no timestamps, no source maps, no absolute paths; same input, same bytes.
import { build } from "esbuild";
import { copyFile, mkdir } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const flag = process.argv.indexOf("--out");
const out = resolve(flag > 0 ? process.argv[flag + 1] : join(here, "..", "grpcchat", "web", "static"));

const common = {
  absWorkingDir: here,
  bundle: true,
  minify: true,
  legalComments: "none",
  charset: "utf8",
  logLevel: "warning",
  target: ["es2022", "chrome100", "firefox100", "safari15"],
};

await mkdir(out, { recursive: true });
await build({ ...common, entryPoints: ["src/main.ts"], outfile: join(out, "app.js"), format: "esm" });
await build({ ...common, entryPoints: ["src/app.css"], outfile: join(out, "app.css") });
await copyFile(join(here, "src", "index.html"), join(out, "index.html"));
