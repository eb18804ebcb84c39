"""The store names are defined once, in memory/config.py; the editor copies must match it.

The Neovim plugin lists them for completion and checking before it asks the server, so a
store added or renamed in Python must be changed there too: this test says where.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dmem_lsp.cli.main import STORES, build_parser
from memory.config import DEFAULT_STORES

NEOVIM = Path(__file__).resolve().parents[2] / "editors" / "neovim"


def lua_strings(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"'([^']*)'", text))


def test_the_command_line_offers_the_stores_of_the_config():
    assert STORES == DEFAULT_STORES
    parser = build_parser()
    for store in DEFAULT_STORES:
        assert parser.parse_args(["--reset-memory", "--store", store]).store == store
        assert parser.parse_args(["memory", "export", "--store", store, "-o", "x"]).export_store == store
    with pytest.raises(SystemExit):
        parser.parse_args(["--reset-memory", "--store", "nope"])


def test_the_neovim_copies_match():
    commands = (NEOVIM / "lua" / "dmem" / "commands.lua").read_text()
    listed = re.search(r"^M\.STORES = \{([^}]*)\}", commands, re.M)
    assert listed, "commands.lua defines M.STORES"
    assert lua_strings(listed.group(1)) == DEFAULT_STORES, "editors/neovim/lua/dmem/commands.lua: M.STORES"
    plugin = (NEOVIM / "plugin" / "dmem.lua").read_text()
    completion = re.search(r"complete = function\(\)\s*return \{([^}]*)\}", plugin)
    assert completion, "plugin/dmem.lua completes the store names"
    assert lua_strings(completion.group(1)) == DEFAULT_STORES, "editors/neovim/plugin/dmem.lua: the reset completion"
