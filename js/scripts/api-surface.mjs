// Prints the package's public API as its built declarations (dist/**/*.d.ts) declare it: for each
// entry of package.json "exports", every exported name and its declaration, then the declarations
// those refer to that the entry does not export. Private class members, comments and which module
// a declaration lives in are left out: they are not part of what a user can reach. The committed
// api-surface.txt is this output; a test (tests/sender/test_typescript.py) compares a fresh build
// against it, so a change to the public API is always a reviewed one. After a deliberate change:
//
//   npm run build && node scripts/api-surface.mjs > api-surface.txt
//
//   node scripts/api-surface.mjs [--docs] [distDir]     (default: dist; prints to stdout)
//
// --docs keeps the declarations' doc comments, to check that a refactoring moved them unchanged.
import { readFileSync } from "node:fs";
import path from "node:path";
import ts from "typescript";

const root = new URL("..", import.meta.url).pathname;
const args = process.argv.slice(2);
const withDocs = args.includes("--docs");
const dist = path.resolve(args.find((arg) => arg !== "--docs") ?? path.join(root, "dist"));
const manifest = JSON.parse(readFileSync(path.join(root, "package.json"), "utf8"));

const entries = Object.entries(manifest.exports)
  .filter(([, target]) => typeof target === "object" && target.types)
  .map(([name, target]) => [name, path.join(dist, path.relative("./dist", target.types))]);

const program = ts.createProgram(
  entries.map(([, file]) => file),
  {
    noEmit: true,
    skipLibCheck: true,
    types: [],
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    lib: ["lib.es2022.d.ts", "lib.dom.d.ts", "lib.dom.iterable.d.ts"],
  },
);
const checker = program.getTypeChecker();
const printer = ts.createPrinter({ removeComments: !withDocs, newLine: ts.NewLineKind.LineFeed });
const ours = (declaration) => path.resolve(declaration.getSourceFile().fileName).startsWith(dist + path.sep);

function resolved(symbol) {
  return symbol.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(symbol) : symbol;
}

function isPrivate(member) {
  if (member.name && ts.isPrivateIdentifier(member.name)) return true;
  return (ts.getCombinedModifierFlags(member) & ts.ModifierFlags.Private) !== 0;
}

/** The declaration as a user sees it: a class without its private members. */
function publicPart(declaration) {
  if (!ts.isClassDeclaration(declaration)) return declaration;
  return ts.factory.updateClassDeclaration(
    declaration,
    declaration.modifiers,
    declaration.name,
    declaration.typeParameters,
    declaration.heritageClauses,
    declaration.members.filter((member) => !isPrivate(member)),
  );
}

function text(declaration) {
  const node = publicPart(declaration);
  const source = declaration.getSourceFile();
  let printed = printer.printNode(ts.EmitHint.Unspecified, node, source);
  // an editor shows a declaration's last doc comment: one before it is a module's own
  printed = printed.replace(/^(?:\/\*\*[\s\S]*?\*\/\n)+(?=\/\*\*)/, "");
  if (ts.isVariableDeclaration(declaration)) {
    const flags = ts.getCombinedNodeFlags(declaration);
    const keyword = flags & ts.NodeFlags.Const ? "const" : flags & ts.NodeFlags.Let ? "let" : "var";
    return `${keyword} ${printed};`;
  }
  return printed;
}

/** Our own symbols the declaration names in its types (not in private members). */
function referenced(declaration) {
  const found = [];
  const visit = (node) => {
    if (ts.isClassElement(node) && isPrivate(node)) return;
    let name = null;
    if (ts.isTypeReferenceNode(node)) name = node.typeName;
    else if (ts.isExpressionWithTypeArguments(node)) name = node.expression;
    else if (ts.isTypeQueryNode(node)) name = node.exprName;
    else if (ts.isImportTypeNode(node)) name = node.qualifier ?? null;
    if (name !== null) {
      const symbol = checker.getSymbolAtLocation(ts.isQualifiedName(name) ? name.right : name);
      if (symbol !== undefined) {
        const target = resolved(symbol);
        if ((target.declarations ?? []).some(ours)) found.push(target);
      }
    }
    ts.forEachChild(node, visit);
  };
  visit(declaration);
  return found;
}

const out = [];
for (const [entry, file] of entries) {
  const source = program.getSourceFile(file);
  if (source === undefined) throw new Error(`${file} is missing: run npm run build first`);
  const exports = checker
    .getExportsOfModule(checker.getSymbolAtLocation(source))
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const exported = new Set(exports.map(resolved));
  const pending = [];
  const described = new Set();
  out.push(`# ${manifest.name}${entry.slice(1)}`, "");
  for (const symbol of exports) {
    const target = resolved(symbol);
    for (const declaration of target.declarations ?? []) {
      out.push(`export ${symbol.name}: ${text(declaration)}`);
      pending.push(...referenced(declaration));
    }
  }
  const inner = [];
  while (pending.length > 0) {
    const target = pending.shift();
    if (exported.has(target) || described.has(target)) continue;
    described.add(target);
    for (const declaration of target.declarations ?? []) {
      inner.push(`${target.name}: ${text(declaration)}`);
      pending.push(...referenced(declaration));
    }
  }
  if (inner.length > 0) out.push("", "## referenced, not exported", "", ...inner.sort());
  out.push("");
}
process.stdout.write(out.join("\n"));
