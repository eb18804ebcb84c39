"""SIGKILL the real server at random moments while it writes memory, and check what every
restart finds on disk.

Each round changes two convention files (so they are written again, in chunks of 16
tokens), starts the server, sends an edit and a debug step, and kills it (SIGKILL) after a
random number of ``dmem/memory`` events plus a random fraction of a frame. The next start
must find, when its folder has opened: no temp file left, a state file that passes its
checksum, a manifest that records exactly the sources of that state, and every source the
state records fully written: its write was reported complete (``written``) for that very
text, and the state's conventions token count covers all of them. A final start lets the
learning finish: then every convention file is recorded with its current text (none is
lost for good). Used by tests/dmem_lsp/test_kills.py and benchmarks/durability.py.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmem_lsp.workspace.files import StoreError
from dmem_lsp.workspace.store import WorkspaceStore
from tests.dmem_lsp.lsp import RawServer

CONVENTIONS = {
    "pyproject.toml": (
        "[tool.ruff]\nline-length = 100\nselect = ['E', 'F', 'I', 'B']\n[tool.pytest.ini_options]\ntestpaths = ['qa']\n"
    ),
    "setup.cfg": "[flake8]\nmax-line-length = 100\nexclude = build,dist\n[isort]\nprofile = black\n",
    ".editorconfig": "root = true\n[*]\nindent_style = space\nindent_size = 4\nend_of_line = lf\n",
    "tox.ini": "[tox]\nenvlist = py311,py312\n[testenv]\ncommands = pytest qa\n",
    "README.md": "# Project\nTests live in qa/. Use snake_case for functions and CamelCase for classes.\n",
    "CONTRIBUTING.md": "Write a test for every fix. Keep functions under forty lines. Log to stderr.\n",
}
OPTIONS = {
    "completion": {"maxTokens": 4, "debounceMs": 0},
    "memory": {"writeChunkTokens": 16, "saveDebounceMs": 0, "editDebounceMs": 0},
}
APP = "def add(a, b):\n    return a + b\n"
WAIT = 180


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def initialize(server: RawServer, workspace: Path, options: dict[str, Any], progress: bool = True) -> None:
    capabilities = {"window": {"workDoneProgress": progress}}
    server.request(1, "initialize", {
        "processId": os.getpid(), "rootUri": workspace.as_uri(), "capabilities": capabilities,
        "workspaceFolders": [{"uri": workspace.as_uri(), "name": workspace.name}], "initializationOptions": options,
    })
    server.response(1)
    server.notify("initialized", {})


def learning_ended(message: dict[str, Any]) -> bool:
    return message.get("method") == "$/progress" and message["params"]["value"].get("kind") == "end"


def memory_event(message: dict[str, Any], event: str | None = None) -> bool:
    return message.get("method") == "dmem/memory" and (event is None or message["params"]["event"] == event)


@dataclass
class Kills:
    """The workspace under test and what the rounds have seen."""

    workspace: Path
    args: list[str]
    env: dict[str, str]
    rng: random.Random
    written: dict[tuple[str, str], int] = field(default_factory=dict)
    """{(convention file, sha256 of its text): tokens} for every write reported complete."""
    texts: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    rounds: int = 0
    while_learning: int = 0
    """Kills that came before the conventions pass had ended (mid-write or mid-save)."""

    @property
    def survived(self) -> int:
        """Rounds whose restart found nothing wrong."""
        failed = {problem.split(":")[0] for problem in self.problems if problem.startswith("restart ")}
        return self.rounds - len(failed)

    @property
    def files(self) -> WorkspaceStore:
        return WorkspaceStore(self.workspace)

    def setup(self) -> None:
        (self.workspace / "src").mkdir(parents=True, exist_ok=True)
        (self.workspace / "src" / "app.py").write_text(APP)
        for name, text in CONVENTIONS.items():
            self.write_file(name, text)

    def write_file(self, name: str, text: str) -> None:
        (self.workspace / name).write_text(text)
        self.texts[name] = text

    def record(self, message: dict[str, Any]) -> None:
        params = message.get("params") or {}
        if memory_event(message, "written") and params.get("kind") == "convention":
            self.written[(params["source"], sha256(self.texts[params["source"]]))] = params["written"]

    def check(self, when: str) -> list[str]:
        """What is wrong with the files on disk now (a started server has just opened them)."""
        files, problems = self.files, []
        left = sorted(str(p.relative_to(files.dir)) for p in files.dir.rglob(".*.tmp"))
        if left:
            problems.append(f"{when}: temp files left: {left}")
        if not files.state_path.exists():
            return problems
        try:
            saved = files.read_saved()
        except StoreError as error:
            return [*problems, f"{when}: the state does not load: {error}"]
        for source, digest in saved.sources.items():
            if (source, digest) not in self.written:
                problems.append(f"{when}: the state records {source} ({digest[:12]}) whose write never completed")
        needed = sum(self.written.get(item, 0) for item in saved.sources.items())
        if saved.tokens.get("conventions", 0) < needed:
            problems.append(
                f"{when}: conventions hold {saved.tokens.get('conventions', 0)} tokens, its sources {needed}"
            )
        manifest, problem = files.read_manifest(move_aside=False)
        if problem or manifest["sources"] != saved.sources:
            problems.append(f"{when}: the manifest does not match the state ({problem or manifest['sources']})")
        return problems

    def start(self) -> RawServer:
        server = RawServer(self.args, self.env)
        initialize(server, self.workspace, OPTIONS)
        self.drain_until(server, lambda m: memory_event(m, "opened"))
        return server

    def drain_until(self, server: RawServer, match) -> dict[str, Any]:
        while True:
            message = server.next(WAIT)
            self.record(message)
            if match(message):
                return message
            if "method" in message and "id" in message:  # window/workDoneProgress/create
                server.send({"jsonrpc": "2.0", "id": message["id"], "result": None})

    def one_round(self) -> None:
        """Change two files, start, keep the server writing, kill it at a random moment."""
        self.rounds += 1
        for name in self.rng.sample(sorted(CONVENTIONS), 2):
            self.write_file(name, self.texts[name] + f"# round {self.rounds}: keep lines short\n")
        server = self.start()
        self.problems += self.check(f"restart {self.rounds}")
        app = (self.workspace / "src" / "app.py").as_uri()
        server.notify(
            "textDocument/didOpen", {"textDocument": {"uri": app, "languageId": "python", "version": 1, "text": APP}}
        )
        server.notify("textDocument/didChange", {
            "textDocument": {"uri": app, "version": 2},
            "contentChanges": [{"text": APP + f"\n\ndef sub_{self.rounds}(a, b):\n    return a - b\n"}],
        })
        server.notify(
            "dmem/debugStep", {"text": f"round {self.rounds}: test_add FAILED, assert 3 == 4", "kind": "test failure"}
        )
        events = self.rng.randint(0, 12)
        learned = False

        def moment(message: dict[str, Any]) -> bool:
            nonlocal events, learned
            learned = learned or learning_ended(message)
            if memory_event(message):
                events -= 1
            return events < 0 or learned

        try:
            self.drain_until(server, moment)
            time.sleep(self.rng.random() * 0.02)  # not only right at an event: anywhere in between
        finally:
            server.process.kill()
            server.process.wait(timeout=WAIT)
        self.while_learning += not learned
        try:
            while True:  # what it wrote before dying (a completed write is reported before it is recorded)
                self.record(server.next(WAIT))
        except EOFError:
            pass

    def finish(self) -> None:
        """Start once more, let the learning finish, shut down: every file is learned."""
        server = self.start()
        self.problems += self.check("final restart")
        self.drain_until(server, learning_ended)  # the conventions pass (loading ended before "opened")
        assert server.close() == 0
        saved = self.files.read_saved()
        missing = {name for name, text in self.texts.items() if saved.sources.get(name) != sha256(text)}
        if missing:
            self.problems.append(f"after the final start, never learned: {sorted(missing)}")
        self.problems += self.check("after shutdown")
