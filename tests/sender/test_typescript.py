"""The TypeScript client (``js/``): its unit suite, one wire source, its size budget, its package.

The live parts (a real browser on the real server, the gateway process) are in
``tests/integration/test_typescript_live.py``.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.typescript import JS, ROOT, node, node_tests, readme_example, run

BUNDLE_BUDGET_BYTES = 12 * 1024
"""The browser bundle of our code (without livekit-client), minified + gzip."""


def test_the_unit_suite_passes() -> None:
    counts = node_tests("test/unit/")
    assert counts["pass"] >= 80


def test_the_wire_types_are_generated_from_what_python_publishes_now() -> None:
    # the schema the Python side publishes today, and the TypeScript generated from it, are
    # exactly the committed files: a change to protocol.py without `npm run generate` fails here
    schema = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "wire_schema.py")],
        capture_output=True, check=True, text=True,
    ).stdout
    assert schema == (JS / "schema" / "wire.schema.json").read_text(encoding="utf-8"), (
        "js/schema/wire.schema.json is stale: run `npm run generate` in js/ after "
        "`.venv/bin/python scripts/wire_schema.py > js/schema/wire.schema.json`"
    )
    generated = run([node(), "scripts/generate-types.mjs", "schema/wire.schema.json", "-"]).output
    assert generated == (JS / "src" / "generated" / "wire.ts").read_text(encoding="utf-8"), (
        "js/src/generated/wire.ts is stale: run `npm run generate` in js/"
    )


def test_the_public_api_is_the_reviewed_one() -> None:
    # what a user can reach (every entry of package.json "exports": names, signatures, public
    # members), read from the built declarations, is the committed js/api-surface.txt: moving
    # code between modules leaves it as it is, and an API change is reviewed in the same commit
    surface = run([node(), "scripts/api-surface.mjs"]).output
    committed = (JS / "api-surface.txt").read_text(encoding="utf-8")
    assert surface == committed, (
        "the public API of js/ changed: review the difference, then `npm run api` in js/ "
        "updates js/api-surface.txt"
    )
    sections = re.findall(r"^# (\S+)$", surface, re.M)
    assert sections == [
        "@imaginex/context-client",
        "@imaginex/context-client/room",
        "@imaginex/context-client/gateway",
    ]
    assert "export ContextClient: export declare class ContextClient {" in surface
    assert "    speak(text: string | null, options?: SpeakOptions): Promise<Speech>;" in surface
    assert "private " not in surface  # private members are no part of it


def test_the_browser_bundle_is_within_budget() -> None:
    node()
    bundle = (JS / "dist" / "browser" / "imaginex-room.min.js").read_bytes()
    size = len(gzip.compress(bundle, compresslevel=9))
    assert b"livekit-client" in bundle  # imported, not bundled
    assert len(bundle) < 60_000
    assert size <= BUNDLE_BUDGET_BYTES, f"{size} bytes minified + gzip"
    print(f"browser bundle: {len(bundle)} bytes minified, {size} bytes gzip")


def test_npm_pack_installs_and_imports_in_an_empty_folder(tmp_path: Path) -> None:
    binary = node()
    npm = str(Path(binary).with_name("npm"))
    # the package was just built by node(): no prepack build again
    packed = run(
        [npm, "pack", "--ignore-scripts", "--pack-destination", str(tmp_path), "--json"]
    ).output
    (info,) = json.loads(packed[packed.index("[") :])
    files = {entry["path"] for entry in info["files"]}
    expected = {"package.json", "dist/index.js", "dist/room/index.d.ts", "dist/gateway/index.js"}
    assert expected <= files
    assert not any(name.startswith(("src/", "test/", "node_modules/")) for name in files)
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "app", "private": true, "type": "module"}')
    # offline: livekit-client (the peer dependency) comes from the cache `npm ci` filled
    run(
        [npm, "install", "--offline", "--no-audit", "--no-fund", str(tmp_path / info["filename"]),
         f"livekit-client@{_installed_version('livekit-client')}"],
        cwd=app,
    )
    (app / "check.mjs").write_text(
        "import * as core from '@imaginex/context-client';\n"
        "import { ContextClient } from '@imaginex/context-client/room';\n"
        "import { GatewayClient } from '@imaginex/context-client/gateway';\n"
        "import * as bundle from '@imaginex/context-client/room/bundle';\n"
        "const body = '{\"type\":\"speak\",\"message\":\"hi\"}';\n"
        "const envelope = await core.signRequest(body, 's3cret', { timestamp: 1700000000 });\n"
        "console.log(JSON.stringify({ room: typeof ContextClient, gateway: typeof GatewayClient,"
        " bundle: typeof bundle.ContextClient,"
        " signature: JSON.parse(envelope).signature }));\n"
    )
    out = run([binary, "check.mjs"], cwd=app).output
    assert json.loads(out) == {
        "room": "function",
        "gateway": "function",
        "bundle": "function",
        "signature": "cc296f6fc8cae0e2f9c641b0f00c0b497a801e16af81b2004352758a594901a7",
    }
    # the types resolve through the exports map, as a TypeScript user's editor sees them
    (app / "check.ts").write_text(
        "import { GatewayClient, type SpeakResponse } from '@imaginex/context-client/gateway';\n"
        "import { ContextClient, type Speech } from '@imaginex/context-client/room';\n"
        "const gateway = new GatewayClient({ baseUrl: 'http://127.0.0.1:8089', apiSecret: 's' });\n"
        "export const answer: Promise<SpeakResponse> = gateway.speak('A1', { message: 'Hi' });\n"
        "export async function say(client: ContextClient): Promise<number | undefined> {\n"
        "  const speech: Speech = await client.speak('Hi');\n"
        "  return (await speech.finished()).played_s;\n"
        "}\n"
    )
    run(
        [binary, str(JS / "node_modules" / "typescript" / "bin" / "tsc"), "--noEmit", "--strict",
         "--module", "nodenext", "--moduleResolution", "nodenext", "--target", "es2022",
         "--lib", "es2022,dom", "--skipLibCheck", "check.ts"],
        cwd=app,
    )


def _installed_version(package: str) -> str:
    manifest = JS / "node_modules" / package / "package.json"
    version: str = json.loads(manifest.read_text(encoding="utf-8"))["version"]
    return version


def test_the_documentations_examples_type_check() -> None:
    # every TypeScript block of docs/typescript.md compiles against the package's own types
    # (the live suite runs the marked ones)
    binary = node()
    text = (ROOT / "docs" / "typescript.md").read_text(encoding="utf-8")
    blocks = [
        textwrap.dedent(code)
        for _indent, code in re.findall(r"^( *)```ts\n(.*?)^\1```", text, re.M | re.S)
    ]
    assert len(blocks) >= 4
    blocks.append(readme_example())
    folder = JS / "build" / "docs-check"
    folder.mkdir(parents=True, exist_ok=True)
    ambient = (
        "declare const serverUrl: string;\ndeclare const token: string;\n"
        "declare const client: import('@imaginex/context-client/room').ContextClient;\n"
        "declare const room: import('livekit-client').Room;\n"
        "declare const process: { env: Record<string, string | undefined> };\n"
    )
    (folder / "ambient.d.ts").write_text(ambient, encoding="utf-8")
    names = []
    for n, block in enumerate(blocks):
        body = block if "import " in block else f"export {{}};\n{block}"
        (folder / f"example{n}.ts").write_text(body, encoding="utf-8")
        names.append(f"example{n}.ts")
    config = {
        "compilerOptions": {
            "noEmit": True, "strict": True, "module": "nodenext", "moduleResolution": "nodenext",
            "target": "es2022", "lib": ["es2022", "dom"], "skipLibCheck": True, "types": [],
        },
        "files": ["ambient.d.ts", *names],
    }
    (folder / "tsconfig.json").write_text(json.dumps(config), encoding="utf-8")
    run([binary, str(JS / "node_modules" / "typescript" / "bin" / "tsc"), "-p", "."], cwd=folder)
