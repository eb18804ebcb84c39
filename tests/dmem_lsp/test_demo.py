"""``dmem-lsp demo`` as a newcomer runs it: a real process, its real servers, a time limit.

The cache and data dirs are temp dirs (XDG_CACHE_HOME, XDG_DATA_HOME): the first run builds
the model, the second reuses it and is stopped with Ctrl-C (SIGINT to its process group, as
a terminal sends it), which must end its server too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dmem_lsp.cli.demo_model import RECIPE

LIMIT = 540
"""Seconds the whole demo may take on a loaded 2-core machine (about 50 s when idle; pytest gives a test 600)."""
DEMO = [sys.executable, "-m", "dmem_lsp", "demo"]


def demo_env(home: Path) -> dict[str, str]:
    return {**os.environ, "XDG_CACHE_HOME": str(home / "cache"), "XDG_DATA_HOME": str(home / "data")}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo")
    run = subprocess.run(DEMO, env=demo_env(home), capture_output=True, text=True, timeout=LIMIT, check=False)
    return home, run


def test_the_demo_shows_recall_persistence_and_reset(first_run):
    _, run = first_run
    out = run.stdout
    assert run.returncode == 0, out + run.stderr[-3000:]
    n = len(RECIPE.workspace.queries)
    assert "[1/6] model: " in out and RECIPE.name in out
    for convention in RECIPE.workspace.conventions:
        assert f"dmem/memory: written {convention} into conventions" in out
    if RECIPE.trained:
        # most of the answers recall conventions the no-memory answers did not (the small model misses some)
        hits = int(out.split("recall:      ", 1)[1].split("/", 1)[0])
        assert 2 * hits > n and f"recall:      {hits}/{n} answers recall the conventions" in out
    else:
        assert f"recall:      memory changed {n}/{n} answers" in out
    assert f"persistence: {n}/{n} answers identical after the restart; state identical" in out
    assert "dmem/memory: reset " in out and "(by the running server)" in out  # the command a user types
    assert f"reset:       {n}/{n} answers back to the no-memory ones" in out
    # the history never enters a prompt: the documents asked hold none of it
    conventions = "".join(RECIPE.workspace.conventions.values())
    for query in RECIPE.workspace.queries:
        assert query.expected not in query.text and query.text not in conventions


def test_ctrl_c_stops_the_demo_and_its_server(first_run):
    home, _ = first_run
    demo = subprocess.Popen(
        DEMO, env=demo_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(demo.stderr), daemon=True).start()
    lines = []
    try:
        for line in demo.stdout:  # until the server has started
            lines.append(line)
            if "(pid " in line:
                server = int(line.split("(pid ", 1)[1].split(",", 1)[0])
                break
        else:
            pytest.fail("the demo ended before starting its server:\n" + "".join(lines) + "".join(stderr))
        os.killpg(demo.pid, signal.SIGINT)
        assert demo.wait(timeout=120) == 130
    finally:
        if demo.poll() is None:
            demo.kill()
    assert "built before" in "".join(lines) or "shipped" in "".join(lines)  # the second run reuses the model
    with pytest.raises(ProcessLookupError):  # ended and reaped by the demo
        os.kill(server, 0)


def test_the_demo_loads_no_torch_until_it_builds_a_model():
    code = (
        "import sys, dmem_lsp.cli.demo, dmem_lsp.cli.demo_model;"
        " print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.split() == ["False", "False"]


def shipped_dir(tmp_path: Path) -> tuple[Path, str]:
    """A directory laid out as scripts/make-demo-model lays out dmem_lsp/demo_data/, and its SHA256SUMS' sha256."""
    import hashlib
    import json

    (tmp_path / "backbone").mkdir()
    (tmp_path / "adapter").mkdir()
    (tmp_path / "backbone" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "adapter" / "adapter.safetensors").write_bytes(b"adapter")
    query = {"path": "src/q0.py", "prefix": "indent =", "suffix": "\n", "expected": "4"}
    spec = {"recipe": "test-recipe", "conventions": {"README.md": "indent = 4\n"}, "files": {}, "queries": [query]}
    (tmp_path / "workspace.json").write_text(json.dumps(spec))
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    sums = "".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(tmp_path).as_posix()}\n" for p in files
    )
    (tmp_path / "SHA256SUMS").write_text(sums)
    return tmp_path, hashlib.sha256(sums.encode()).hexdigest()


def test_a_shipped_model_is_served_only_as_it_was_recorded(tmp_path):
    from dmem_lsp.cli.demo_model import RecipeError, Shipped

    directory, digest = shipped_dir(tmp_path)
    shipped = Shipped(directory, digest)
    assert shipped.name == "test-recipe" and shipped.trained
    assert shipped.workspace.queries[0].text == "indent =\n"
    lines: list[str] = []
    assert shipped.model(tmp_path / "cache", lines.append) == (directory / "backbone", directory / "adapter")
    assert "sha256 checked" in lines[0]

    (directory / "adapter" / "adapter.safetensors").write_bytes(b"adapter, changed")
    with pytest.raises(RecipeError, match="adapter.safetensors is not the file this dmem-lsp ships"):
        shipped.model(tmp_path / "cache", lines.append)
    with pytest.raises(RecipeError, match="SHA256SUMS is not the one this dmem-lsp ships"):
        Shipped(directory, "0" * 64).model(tmp_path / "cache", lines.append)
    with pytest.raises(RecipeError, match="make it: scripts/make-demo-model"):
        Shipped(tmp_path / "nowhere", digest)


def test_a_shipped_model_that_does_not_recall_fails_the_demo(tmp_path, monkeypatch, capsys):
    """The Shipped path end to end, with the stand-in's weights: the demo serves them, says that nothing was
    recalled, and exits 1 (persistence and reset hold all the same)."""
    import dataclasses
    import hashlib
    import json

    from dmem_lsp.cli import demo, demo_model

    standin = demo_model.StandIn()
    data = tmp_path / "demo_data"
    standin.build(data)
    (data / "model").rename(data / "backbone")
    ws = standin.workspace
    spec = {"recipe": "untrained", "conventions": ws.conventions, "files": ws.files,
            "queries": [dataclasses.asdict(q) for q in ws.queries]}
    (data / "workspace.json").write_text(json.dumps(spec))
    files = sorted(p for p in data.rglob("*") if p.is_file())
    sums = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(data).as_posix()}\n" for p in files)
    (data / "SHA256SUMS").write_text(sums)
    monkeypatch.setattr(demo_model, "RECIPE", demo_model.Shipped(data, hashlib.sha256(sums.encode()).hexdigest()))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))

    assert demo.run_demo() == 1
    out = capsys.readouterr().out
    n = len(ws.queries)
    assert "(the untrained recipe, shipped; sha256 checked)" in out
    assert "not recalled ✗" in out and f"{n}/{n} answers recall" not in out
    assert f"persistence: {n}/{n} answers identical after the restart" in out
    assert f"reset:       {n}/{n} answers back to the no-memory ones" in out
