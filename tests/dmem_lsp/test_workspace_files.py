"""Odd files in a workspace: a ``.dmem/config.toml`` that is a directory, an out-of-range cap, links."""

from __future__ import annotations

from dmem_lsp.runtime.settings import parse_settings
from dmem_lsp.workspace.config import read_workspace_config


def test_a_config_that_is_a_directory_is_ignored_with_a_warning(tmp_path):
    (tmp_path / ".dmem" / "config.toml").mkdir(parents=True)
    config, warnings = read_workspace_config(tmp_path)
    assert config.path is None and config.memory == {}
    assert len(warnings) == 1 and "is a directory" in warnings[0] and str(tmp_path) in warnings[0]


def test_a_file_cap_out_of_range_falls_back_with_a_warning(tmp_path):
    (tmp_path / ".dmem").mkdir()
    (tmp_path / ".dmem" / "config.toml").write_text("[memory]\nmax-file-bytes = 1000000000000\n")
    config, warnings = read_workspace_config(tmp_path)
    assert "max_file_bytes" not in config.memory
    assert any("max-file-bytes" in w and "≤ 16777216" in w and "1000000000000" in w for w in warnings)


def test_the_editor_setting_has_the_same_bound():
    settings, warnings = parse_settings({"memory": {"maxFileBytes": 10**12}})
    assert settings.memory.max_file_bytes == 262144
    assert any("maxFileBytes" in w and "≤ 16777216" in w for w in warnings)
    settings, warnings = parse_settings({"memory": {"maxFileBytes": 16 << 20}})
    assert settings.memory.max_file_bytes == 16 << 20 and not warnings
