"""``dmem-lsp download``: put the model and the adapter into the Hugging Face cache ahead of time.

The server downloads them on its first start, while the editor waits; this does it from a
terminal instead, with huggingface_hub's progress bars and the size up front, so that
every start runs offline (``HF_HUB_OFFLINE=1`` works after it). With no flags it fetches
the default model and adapter, and the hub adapter the current repository's
``.dmem/config.toml`` names; with ``--model``/``--adapter`` only what is named. Local
directories are used where they are and need nothing. Nothing here imports torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dmem_lsp.runtime.locations import download_command, is_hub_id
from dmem_lsp.runtime.settings import parse_settings

__all__ = ["run_download", "download_command"]


def _size(nbytes: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return ""


def _on_disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())  # follows the cache's blob links


def fetch(what: str, name: str, revision: str | None = None) -> bool:
    """Download one repo into the cache (or say where it is already); False when it cannot be had."""
    at = f" at {revision}" if revision else ""
    if not is_hub_id(name, revision):
        path = Path(name).expanduser()
        if path.is_dir():
            print(f"{what} {name}: a local directory ({_size(_on_disk(path))}), nothing to download")
            return True
        print(f"{what} {name}: no such directory; pass an existing directory or a Hugging Face id", file=sys.stderr)
        return False
    from huggingface_hub import snapshot_download

    try:
        cached = Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:
        cached = None
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        if cached is not None:
            print(f"{what} {name}{at}: in the cache already, {cached} ({_size(_on_disk(cached))})")
            return True
        print(
            f"{what} {name}{at} is not in the cache and HF_HUB_OFFLINE=1 is set: "
            f"run `{download_command()}` without HF_HUB_OFFLINE, with network access",
            file=sys.stderr,
        )
        return False
    try:
        plan = snapshot_download(name, revision=revision, dry_run=True)
        total = sum(f.file_size or 0 for f in plan)
        missing = sum(f.file_size or 0 for f in plan if f.will_download)
        print(f"{what} {name}{at}: {len(plan)} files, {_size(total)}; {_size(missing)} to download")
        path = Path(snapshot_download(name, revision=revision))
    except Exception as error:  # no network, no such repo, no permission
        print(f"{what} {name}{at} cannot be downloaded: {error}", file=sys.stderr)
        return False
    print(f"{what} {name}{at}: {path} ({_size(_on_disk(path))})")
    return True


def run_download(overrides: dict, model: str | None, adapter: str | None, revision: str | None) -> int:
    """Fetch what was named, or (nothing named) the settings' model and adapter and the workspace's adapter."""
    settings, _ = parse_settings(overrides)
    wanted: list[tuple[str, str, str | None]] = []
    if model is None and adapter is None:
        wanted.append(("model", settings.model, None))
        if settings.adapter.lower() != "none":
            wanted.append(("adapter", settings.adapter, None))
        wanted.extend(_workspace_adapter())
    else:
        if model is not None:
            wanted.append(("model", model, None))
        if adapter is not None and adapter.lower() != "none":
            wanted.append(("adapter", adapter, revision))
    ok = [fetch(what, name, rev) for what, name, rev in wanted]
    if all(ok):
        print("done: the server starts offline with these (HF_HUB_OFFLINE=1 works)")
    return 0 if all(ok) else 1


def _workspace_adapter() -> list[tuple[str, str, str | None]]:
    """The hub adapter the current repository's ``.dmem/config.toml`` names, if any."""
    from dmem_lsp.workspace.config import WorkspaceConfigError, read_workspace_config
    from dmem_lsp.workspace.roots import workspace_root

    try:
        config, _ = read_workspace_config(workspace_root(Path.cwd()))
    except WorkspaceConfigError:
        return []  # doctor says what is wrong with it
    source = config.adapter
    if source is None or source.revision is None:  # a directory in the repository
        return []
    return [(f"adapter (named by {config.path})", source.name, source.revision)]
