"""The VS Code extension: it type-checks, bundles and packages, and its node tests drive
the real server (a tiny model) the way the extension does.

``editors/vscode/test/protocol.test.mjs`` speaks the extension's whole session with the
server through vscode-languageserver-protocol; ``activation.test.mjs`` activates the bundled
extension against a stand-in ``vscode`` module and lets the real vscode-languageclient start
the server. Both get the server command and the model through ``DMEM_TEST_*`` variables.
``node_modules`` comes from ``scripts/setup --test`` (``npm ci``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import warnings
import zipfile
from pathlib import Path

import pytest

from dmem_lsp.runtime.settings import Settings
from tests.dmem_lsp.lsp import SERVER, server_env

EXTENSION = Path(__file__).resolve().parents[2] / "editors" / "vscode"
TIMEOUT = 600
"""Seconds for one npm or node command (a node suite starts servers and loads a tiny model)."""


@pytest.fixture(scope="module")
def npm() -> str:
    if not (EXTENSION / "node_modules").is_dir():
        pytest.fail("editors/vscode/node_modules is missing: run `scripts/setup --test` (it runs `npm ci` there)")
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not on PATH: install Node.js 20+ (it comes with npm), then `scripts/setup --test`")
    return npm


def run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, cwd=EXTENSION, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, (
        f"{' '.join(command)} exited with {result.returncode}:\n{result.stdout[-8000:]}\n{result.stderr[-8000:]}"
    )
    return result


@pytest.fixture(scope="module")
def bundle(npm) -> Path:
    run([npm, "run", "bundle"])
    return EXTENSION / "dist" / "extension.js"


def test_type_checks_bundles_and_packages(npm, bundle, tmp_path):
    run([npm, "run", "check"])
    assert bundle.stat().st_size > 0
    vsix = tmp_path / "dmem.vsix"
    run([npm, "run", "package", "--", "--out", str(vsix)])
    names = zipfile.ZipFile(vsix).namelist()
    assert {"extension/dist/extension.js", "extension/package.json"} <= set(names)
    assert not [name for name in names if "node_modules" in name or name.startswith("extension/src/")], names


def server_settings(cls: type = Settings, prefix: str = "dmem.") -> dict[str, tuple[object, dict]]:
    """{dotted camelCase key: (default, metadata)} for every leaf of the server's settings tree."""
    leaves = {}
    for field in dataclasses.fields(cls):
        head, *rest = field.name.split("_")
        key = prefix + head + "".join(part.title() for part in rest)
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if dataclasses.is_dataclass(default):
            leaves.update(server_settings(type(default), key + "."))
        else:
            leaves[key] = (list(default) if isinstance(default, tuple) else default, field.metadata)
    return leaves


def test_settings_in_package_json_are_the_servers():
    """package.json offers every server setting with the server's default, choices and minimum,
    and nothing else outside dmem.client: the extension passes the section through unchanged."""
    properties = json.loads((EXTENSION / "package.json").read_text())["contributes"]["configuration"]["properties"]
    offered = {key: value for key, value in properties.items() if not key.startswith("dmem.client.")}
    server = server_settings()
    assert sorted(offered) == sorted(server)
    for key, (default, metadata) in server.items():
        assert offered[key]["default"] == default, key
        assert offered[key].get("enum") == (list(metadata["choices"]) if metadata.get("choices") else None), key
        assert offered[key].get("minimum") == metadata.get("minimum"), key


@pytest.fixture(scope="module")
def node(npm) -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: install Node.js 20+")
    return node


SUMMARY = re.compile(r"ℹ (tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) ")


@pytest.mark.parametrize("suite", ["protocol", "activation"])
def test_extension_with_the_server(suite, node, bundle, talkative_model, talkative_adapter, tmp_path):
    env = {
        **server_env(tmp_path / "data"),
        "TMPDIR": str(tmp_path),  # the suites make their workspace folders there
        "DMEM_TEST_SERVER": json.dumps(SERVER),
        "DMEM_TEST_MODEL": str(talkative_model),
        "DMEM_TEST_ADAPTER": str(talkative_adapter),
    }
    result = run([node, "--test", "--test-reporter=spec", f"test/{suite}.test.mjs"], env)
    assert "ℹ skipped 0" in result.stdout, result.stdout
    for line in result.stdout.splitlines():  # what a test reported without failing
        if line.strip().startswith("ℹ ") and not SUMMARY.match(line.strip()):
            warnings.warn(f"{suite}.test.mjs: {line.strip()[2:]}", stacklevel=1)
