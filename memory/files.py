"""Writing a file atomically: the one implementation for memory/ and the language server.

``atomic_write`` writes through a temporary file in the same directory (``.<name>.*.tmp``,
mode 0600 as ``tempfile.mkstemp`` makes it), flushes and fsyncs it, then renames it over the
target with ``os.replace``: a crash leaves the old file or the new one, never a mix (a kill
may leave a stray temp file; a write that raises removes its own). The directory is not
fsynced, so after a power cut the rename itself may be lost and the old file remain.

This module imports no torch: ``dmem_lsp.workspace.files`` uses it in a server that loads
the model stack only later.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, fsync, then rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
