// The browser bundle of the room client (our code only: livekit-client stays an import the page
// maps, as an app's bundler would): dist/browser/imaginex-room.min.js, minified ESM. The size
// budget (12 KB minified + gzip) is checked by tests/sender/test_typescript.py on this file.
import { build } from "esbuild";

const here = new URL("..", import.meta.url).pathname;
await build({
  entryPoints: [`${here}src/room/index.ts`],
  outfile: `${here}dist/browser/imaginex-room.min.js`,
  bundle: true,
  minify: true,
  format: "esm",
  platform: "browser",
  target: ["es2022"],
  external: ["livekit-client"],
  legalComments: "none",
  logLevel: "warning",
});
