"""``.dmem/config.toml``: what a team commits to say how dmem-lsp treats its repository.

    [adapter]                      # the δ-mem adapter for this folder: one of
    path = "tools/dmem-adapter"    #   a directory inside the repository, or
    repo = "acme/dmem-backend"     #   a Hugging Face repo id ...
    revision = "v3"                #   ... pinned to a tag, branch or commit (required)

    [memory]                       # overrides of the editor's dmem.memory settings
    convention-file-tokens = 1024  #   (kebab-case, snake_case or camelCase keys)
    enabled = false                #   can turn writing off, never on against the user

    [stores]                       # which stores the server writes for this folder
    edits = false

    [policy]
    ignore = ["generated/**"]      # gitignore patterns, as if in .dmemignore
    conventions = ["docs/rules.md"]  # more files written as conventions

A value of the wrong type is ignored with a warning the server shows. A file that is not
TOML, or an ``[adapter]`` that cannot be used as written (a path outside the repository, a
repo without a revision), is a ``WorkspaceConfigError``: the folder then gets no memory
until it is fixed, rather than memory made with an adapter the team did not choose.
Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from dmem_lsp.runtime.settings import MemorySettings, check_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["CONFIG_PATH", "AdapterSource", "WorkspaceConfig", "WorkspaceConfigError", "read_workspace_config"]

CONFIG_PATH = Path(".dmem") / "config.toml"
SECTIONS = ("adapter", "memory", "stores", "policy")


class WorkspaceConfigError(ValueError):
    """A ``.dmem/config.toml`` that cannot be used, with what to change."""


@dataclass(frozen=True)
class AdapterSource:
    """Where an adapter comes from: a local directory, or a hub repo id at a revision."""

    name: str
    """A directory (absolute for one named by a workspace) or a Hugging Face repo id."""
    revision: str | None = None
    """The hub revision (tag, branch or commit); None for a directory or the default branch."""
    origin: str = "the dmem.adapter setting"
    """Who named it, for messages: the setting, or a workspace's config file."""

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.name, self.revision)

    def __str__(self) -> str:
        return f"{self.name}@{self.revision}" if self.revision else self.name


@dataclass(frozen=True)
class WorkspaceConfig:
    """One folder's ``.dmem/config.toml`` (every field empty when there is none)."""

    path: Path | None = None
    adapter: AdapterSource | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    """MemorySettings field → value, for the keys the file sets (validated)."""
    stores: dict[str, bool] = field(default_factory=dict)
    """Store → whether the server writes it for this folder (absent: it does)."""
    ignore: tuple[str, ...] = ()
    conventions: tuple[str, ...] = ()

    def memory_settings(self, user: MemorySettings) -> MemorySettings:
        """The user's memory settings with this folder's laid over them.

        ``enabled`` only ever turns writing off: a committed file cannot start writing
        someone's work into memory when they switched that off.
        """
        changes = dict(self.memory)
        changes["enabled"] = user.enabled and changes.get("enabled", True)
        return dataclasses.replace(user, **changes)

    def writes(self, store: str) -> bool:
        return self.stores.get(store, True)


def read_workspace_config(root: Path, stores: tuple[str, ...] = ()) -> tuple[WorkspaceConfig, list[str]]:
    """The config of the folder at ``root`` and a warning per value ignored.

    ``stores`` are the store names the memory has (for checking ``[stores]``; empty: any).
    Raises ``WorkspaceConfigError`` when the file cannot be read as TOML or names its
    adapter in a way that cannot be used.
    """
    path = root / CONFIG_PATH
    if path.is_dir():
        return WorkspaceConfig(), [
            f"{path} is a directory, not a file: ignored (the folder uses the editor's settings)"
        ]
    if not path.is_file():
        return WorkspaceConfig(), []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise WorkspaceConfigError(f"cannot read {path}: {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise WorkspaceConfigError(f"{path} is not valid TOML: {error}") from error
    warnings: list[str] = []
    where = f"{CONFIG_PATH.as_posix()}"
    for key in data:
        if key not in SECTIONS:
            warnings.append(f"{where}: unknown section or key {key!r}, ignored (known: {', '.join(SECTIONS)})")
    tables = {}
    for section in SECTIONS:
        value = data.get(section, {})
        if not isinstance(value, dict):
            warnings.append(f"{where}: {section} must be a table ([{section}]), ignored")
            value = {}
        tables[section] = {_snake(key): item for key, item in value.items()}
    return (
        WorkspaceConfig(
            path=path,
            adapter=_adapter(root.resolve(), path, tables["adapter"]),
            memory=_memory(tables["memory"], f"{where} [memory]", warnings),
            stores=_stores(tables["stores"], stores, f"{where} [stores]", warnings),
            ignore=_strings(tables["policy"], "ignore", f"{where} [policy]", warnings),
            conventions=_strings(tables["policy"], "conventions", f"{where} [policy]", warnings),
        ),
        warnings
        + [
            f"{where} [policy]: unknown key {key!r}, ignored"
            for key in tables["policy"]
            if key not in ("ignore", "conventions")
        ],
    )


def _snake(key: str) -> str:
    """kebab-case and camelCase keys as the snake_case field names."""
    out = "".join(f"_{c.lower()}" if c.isupper() else c for c in key.replace("-", "_"))
    return out.lstrip("_")


def _adapter(root: Path, path: Path, table: dict[str, Any]) -> AdapterSource | None:
    if not table:
        return None
    origin = str(path)
    unknown = sorted(set(table) - {"path", "repo", "revision"})
    if unknown:
        raise WorkspaceConfigError(
            f"{path} [adapter]: unknown keys {', '.join(unknown)} (use path, or repo and revision)"
        )
    local, repo, revision = table.get("path"), table.get("repo"), table.get("revision")
    for name, value in (("path", local), ("repo", repo), ("revision", revision)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise WorkspaceConfigError(f"{path} [adapter]: {name} must be a non-empty string, got {value!r}")
    if (local is None) == (repo is None):
        raise WorkspaceConfigError(
            f"{path} [adapter]: give either path (a directory inside the repository) "
            "or repo and revision (a Hugging Face repo id)"
        )
    if local is not None:
        if revision is not None:
            raise WorkspaceConfigError(f"{path} [adapter]: revision goes with repo, not with path")
        directory = (root / local).resolve()
        if directory != root and root not in directory.parents:
            raise WorkspaceConfigError(
                f"{path} [adapter]: path {local!r} leads outside the repository ({directory}); "
                "commit the adapter inside it, or name a Hugging Face repo"
            )
        return AdapterSource(str(directory), None, origin)
    assert repo is not None  # one of path and repo, checked above
    if revision is None:
        raise WorkspaceConfigError(
            f"{path} [adapter]: repo {repo!r} needs a revision (a tag, branch or commit), so that everyone "
            "on the team loads the same adapter"
        )
    if repo.count("/") != 1 or repo.startswith(("/", ".", "~")):
        raise WorkspaceConfigError(
            f"{path} [adapter]: repo must be a Hugging Face repo id such as org/name, not {repo!r}"
        )
    return AdapterSource(repo, revision, origin)


def _memory(table: dict[str, Any], where: str, warnings: list[str]) -> dict[str, Any]:
    hints = get_type_hints(MemorySettings)
    fields = {f.name: f for f in dataclasses.fields(MemorySettings)}
    values = {}
    for key, value in table.items():
        if key not in fields:
            warnings.append(f"{where}: unknown setting {key!r}, ignored")
            continue
        ok, value, expected = check_value(value, hints[key], fields[key].metadata)
        if ok:
            values[key] = value
        else:
            warnings.append(f"{where}: {key.replace('_', '-')} expected {expected}, got {value!r}; ignored")
    return values


def _stores(table: dict[str, Any], known: tuple[str, ...], where: str, warnings: list[str]) -> dict[str, bool]:
    values = {}
    for key, value in table.items():
        if known and key not in known:
            warnings.append(f"{where}: unknown store {key!r}, ignored (stores: {', '.join(known)})")
        elif not isinstance(value, bool):
            warnings.append(f"{where}: {key} expected true or false, got {value!r}; ignored")
        else:
            values[key] = value
    return values


def _strings(table: dict[str, Any], key: str, where: str, warnings: list[str]) -> tuple[str, ...]:
    value = table.get(key, [])
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    warnings.append(f"{where}: {key} expected a list of strings, got {value!r}; ignored")
    return ()

