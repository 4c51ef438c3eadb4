// Builds the operator console (js/console/src, TypeScript) into the Python package, where the
// gateway serves it at /console: imaginex_context_plugin/gateway/http/console/static/. The output is
// committed (running the gateway needs no Node); tests/test_console_assets.py builds again into
// a temporary folder and fails when the two differ. Deterministic: same sources, same esbuild,
// same bytes.
//
//   node console/build.mjs [OUT_DIR]       (from js/)
//
// console.js is our code (the gateway client included); livekit-client, which only the
// take-over needs, is split into its own file and loaded when an operator takes a call over.
import { build } from "esbuild";
import { copyFile, mkdir, readdir, rm } from "node:fs/promises";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
const out = process.argv[2] ?? fileURLToPath(new URL("../../imaginex_context_plugin/gateway/http/console/static/", import.meta.url));

await mkdir(out, { recursive: true });
for (const name of await readdir(out)) if (!name.startsWith(".")) await rm(`${out}/${name}`, { recursive: true });
await build({
  entryPoints: { console: `${here}src/main.ts` },
  outdir: out,
  bundle: true,
  splitting: true,
  chunkNames: "[name]-[hash]",
  minify: true,
  format: "esm",
  platform: "browser",
  target: ["es2022"],
  legalComments: "none",
  logLevel: "warning",
  charset: "utf8",
});
await build({
  entryPoints: [`${here}console.css`],
  outfile: `${out}/console.css`,
  bundle: true,
  minify: true,
  legalComments: "none",
  logLevel: "warning",
  charset: "utf8",
});
for (const name of ["index.html", "favicon.svg"]) await copyFile(`${here}${name}`, `${out}/${name}`);
