"""Settings: one typed, defaulted tree; bad values fall back with a warning naming them."""

from __future__ import annotations

import pytest

from dmem_lsp.runtime.settings import Settings, merge, parse_settings, torch_threads


def test_defaults_without_settings():
    for raw in (None, {}, {"dmem": {}}):
        settings, warnings = parse_settings(raw)
        assert settings == Settings() and warnings == []
    assert Settings().engine_options().quantization is None


@pytest.mark.parametrize("raw", [[], {"dmem": []}, {"dmem": {"completion": []}}], ids=["bare", "section", "nested"])
def test_an_empty_lua_table_is_empty_settings(raw):
    """Neovim encodes ``settings = { dmem = {} }`` as ``{"dmem": []}``: no warning at start."""
    assert parse_settings(raw) == (Settings(), [])
    assert parse_settings(merge(raw, {"device": "cpu"})) == (Settings(device="cpu"), [])


def test_camel_case_values_under_a_dmem_section():
    settings, warnings = parse_settings(
        {
            "dmem": {
                "adapter": "none",
                "quantization": "nf4",
                "completion": {"maxTokens": 9, "stop": ["\n\n"], "debounceMs": 0},
            }
        }
    )
    assert warnings == []
    assert (settings.completion.max_tokens, settings.completion.stop, settings.completion.debounce_ms) == (
        9,
        ("\n\n",),
        0,
    )
    options = settings.engine_options()
    assert options.adapter is None and options.quantization == "nf4"


@pytest.mark.parametrize(
    "raw, name",
    [
        ({"device": "tpu"}, "dmem.device"),
        ({"completion": {"maxTokens": 0}}, "dmem.completion.maxTokens"),
        ({"completion": {"maxTokens": True}}, "dmem.completion.maxTokens"),
        ({"completion": {"enabled": "yes"}}, "dmem.completion.enabled"),
        ({"completion": {"stop": "\n"}}, "dmem.completion.stop"),
        ({"explain": 3}, "dmem.explain"),
        ({"model": ""}, "dmem.model"),
        ({"modle": "x"}, "dmem.modle"),
    ],
)
def test_a_bad_value_falls_back_to_its_default_and_is_named(raw, name):
    settings, warnings = parse_settings(raw)
    assert settings == Settings()
    (warning,) = warnings
    assert warning.startswith(name + ":")


def test_the_rest_survives_a_bad_value():
    settings, warnings = parse_settings({"completion": {"maxTokens": "many", "prefixTokens": 10}})
    assert settings.completion.prefix_tokens == 10 and settings.completion.max_tokens == 64
    assert warnings == ["dmem.completion.maxTokens: expected an integer ≥ 1, got 'many'; using 64"]


def test_not_an_object_at_all():
    settings, (warning,) = parse_settings(["model"])
    assert settings == Settings() and "expected an object" in warning


def test_command_line_overrides_win_and_nested_objects_merge():
    merged = merge(
        {"dmem": {"model": "a", "completion": {"maxTokens": 3}}}, {"model": "b", "completion": {"debounceMs": 5}}
    )
    assert merged == {"model": "b", "completion": {"maxTokens": 3, "debounceMs": 5}}
    assert merge(None, {"device": "cpu"}) == {"device": "cpu"}


def test_the_editor_clients_own_settings_are_ignored_quietly():
    raw = {"dmem": {"model": "m", "client": {"serverPath": "/opt/dmem-lsp", "forwardDiagnostics": True}}}
    settings, warnings = parse_settings(raw)
    assert settings.model == "m" and warnings == []


def test_threads_take_a_count_or_auto():
    assert parse_settings({"threads": 3}) == (Settings(threads=3), [])
    assert parse_settings({"threads": "auto"}) == (Settings(threads=0), [])
    for bad in (-1, "four", 1.5):
        settings, (warning,) = parse_settings({"threads": bad})
        assert settings.threads == 0 and warning.startswith("dmem.threads: expected an integer ≥ 0 or \"auto\"")


@pytest.mark.parametrize("cores, threads", [(1, 1), (2, 1), (3, 1), (4, 2), (6, 3), (8, 4), (64, 4)])
def test_auto_threads_are_half_the_cores_at_most_four(monkeypatch, cores, threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert torch_threads(0, cores) == (threads, f"auto: {cores} cores")
    assert torch_threads(5, cores) == (5, "set")
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert torch_threads(0, cores) == (7, "auto: OMP_NUM_THREADS")
