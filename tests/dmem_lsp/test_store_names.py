"""The store names are defined once, in memory/config.py: the command line takes them from
there, and the editors from the server (its memoryStatus answer), never from a copy.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dmem_lsp.cli.main import STORES, build_parser
from memory.config import DEFAULT_STORES

NEOVIM = Path(__file__).resolve().parents[2] / "editors" / "neovim"


def test_the_command_line_offers_the_stores_of_the_config():
    assert STORES == DEFAULT_STORES
    parser = build_parser()
    for store in DEFAULT_STORES:
        assert parser.parse_args(["--reset-memory", "--store", store]).store == store
        assert parser.parse_args(["memory", "export", "--store", store, "-o", "x"]).export_store == store
    with pytest.raises(SystemExit):
        parser.parse_args(["--reset-memory", "--store", "nope"])


def test_the_editors_name_no_store():
    """Neovim's completion and check of :DmemResetMemory, and VS Code's choices, take the names
    from the server's memoryStatus answer: a store added in Python needs no editor change."""
    sources = [*(NEOVIM / "lua").rglob("*.lua"), *(NEOVIM / "plugin").rglob("*.lua"), *(NEOVIM / "lsp").rglob("*.lua")]
    sources += (NEOVIM.parent / "vscode" / "src").rglob("*.ts")
    for path in sources:
        text = path.read_text()
        for store in DEFAULT_STORES:
            assert not re.search(rf"""['"]{store}['"]""", text), f"{path} names the store {store}; ask the server"
