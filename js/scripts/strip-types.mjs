// TypeScript on stdin -> an ES module on stdout (esbuild strips the types). The tests run
// docs/typescript.md's examples through it.
import { transform } from "esbuild";

let source = "";
for await (const chunk of process.stdin) source += chunk;
const { code } = await transform(source, { loader: "ts", format: "esm", target: "es2022" });
process.stdout.write(code);
