// Generates src/generated/wire.ts from schema/wire.schema.json, the JSON Schema the Python side
// publishes (scripts/wire_schema.py). Run `npm run generate` after changing protocol.py; a test
// (tests/sender/test_typescript.py) fails when the committed file differs from what this writes.
//
//   node scripts/generate-types.mjs [schema.json] [out.ts]     (out "-": stdout)
import { readFile, writeFile } from "node:fs/promises";
import { compile } from "json-schema-to-typescript";

const here = new URL("..", import.meta.url);
const schemaPath = process.argv[2] ?? new URL("schema/wire.schema.json", here).pathname;
const outPath = process.argv[3] ?? new URL("src/generated/wire.ts", here).pathname;

const schema = JSON.parse(await readFile(schemaPath, "utf8"));
// A title names a type: keep the models' and unions' titles, drop the fields' own ("Speech Id"),
// so that a field's type is written inline instead of as an alias (SpeechId, Id1, Id2...).
for (const definition of Object.values(schema.$defs)) {
  for (const prop of Object.values(definition.properties ?? {})) untitle(prop);
}
function untitle(node) {
  if (Array.isArray(node)) return node.forEach(untitle);
  if (node === null || typeof node !== "object") return;
  delete node.title;
  for (const value of Object.values(node)) untitle(value);
}
const banner = [
  "/* eslint-disable */",
  "// Generated from schema/wire.schema.json (the Python side's protocol.wire_json_schema())",
  "// by scripts/generate-types.mjs. Do not edit: run `npm run generate`.",
].join("\n");

const source = await compile(schema, "ImaginexWire", {
  bannerComment: banner,
  additionalProperties: false,
  unreachableDefinitions: true,
  strictIndexSignatures: true,
  maxItems: -1,
  format: true,
  style: { singleQuote: false, printWidth: 100 },
});

if (outPath === "-") process.stdout.write(source);
else await writeFile(outPath, source);
