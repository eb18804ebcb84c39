"""The ``dmem-lsp`` command line.

This release carries the δ-mem library (``memory/``); the language server it will start
over stdio is not in it yet, so the command answers ``--version`` and ``--help`` and says
so when asked to serve. Nothing here imports torch: start-up must stay fast.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__

DESCRIPTION = (
    "A local coding assistant served as a language server (VS Code, Neovim), "
    "with δ-mem: online memory per workspace that persists across restarts."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmem-lsp", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"dmem-lsp {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print(
        f"dmem-lsp {__version__}: the language server is not part of this release yet; "
        "it provides the δ-mem library (import memory). See --help.",
        file=sys.stderr,
    )
    return 2
