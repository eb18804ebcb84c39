"""The workspace folder a terminal command means: the one an editor opens for the same place.

Editors open the nearest directory holding a root marker (Neovim's ``root_markers``,
VS Code's workspace folder is the repository the user opened), so ``dmem-lsp memory status``
or ``--reset-memory`` run in ``proj/src`` must look at ``proj``'s memory, not ``proj/src``'s.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ROOT_MARKERS", "workspace_root"]

ROOT_MARKERS = (".dmem", ".git", ".hg", ".svn")
"""As ``root_markers`` in editors/neovim/lua/dmem/init.lua."""


def workspace_root(start: Path) -> Path:
    """The nearest directory from ``start`` up that holds a root marker; ``start`` itself without one."""
    here = start.expanduser().resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in ROOT_MARKERS):
            return folder
    return here
