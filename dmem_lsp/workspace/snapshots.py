"""Store snapshots: one store's state in a file, to move a teammate's memory between machines.

A snapshot is a safetensors file holding the tensor ``state`` and, in its metadata, the
store's name, the token count and the fingerprint (backbone, adapter sha256, config) of
the memory it came from, and a ``checksum`` over the tensor and that metadata: a state file's
format, written and read by ``state_file`` with the same checks. A snapshot whose checksum
fails (a flipped bit, a renamed store, changed token counts, a tensor swapped in under a copied
fingerprint), that holds NaN/Inf or other than float32 is refused, naming what failed and
``not imported``; so is one made with another adapter. Snapshots written before checksums
(no ``checksum`` in the metadata) are refused too: export them again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dmem_lsp.runtime.fingerprint import Fingerprint, describe
from dmem_lsp.workspace.files import StoreError
from dmem_lsp.workspace.state_file import read_checked, write_checked

__all__ = ["check_fingerprint", "read_snapshot", "write_snapshot"]

KIND = "dmem-lsp store snapshot"


def write_snapshot(path: Path, store: str, tensor: Any, fingerprint: Fingerprint, tokens: int) -> None:
    metadata = {
        "kind": KIND,
        "store": store,
        "tokens": str(int(tokens)),
        "fingerprint": json.dumps(fingerprint, sort_keys=True),
    }
    write_checked(Path(path), {"state": tensor}, metadata)


def read_snapshot(path: Path, numpy: bool = False) -> tuple[str, Any, Fingerprint, int]:
    """(store, state, fingerprint, tokens), checked (``state_file.read_checked``); StoreError when
    it is not a snapshot or fails a check. ``numpy``: the state as a numpy array, without importing torch."""
    path = Path(path)

    def identify(metadata: dict[str, str]) -> bool:
        if metadata.get("kind") != KIND:
            raise ValueError("not a dmem-lsp store snapshot")
        return True

    try:
        tensors, metadata = read_checked(path, numpy, identify)
        if set(tensors) != {"state"}:
            raise ValueError(f"a snapshot holds one tensor named state, not {', '.join(sorted(tensors))}")
        tokens = int(metadata.get("tokens", 0))
        if tokens < 0:
            raise ValueError(f"negative token count {tokens}")
        return metadata["store"], tensors["state"], json.loads(metadata["fingerprint"]), tokens
    except (KeyError, ValueError) as error:
        raise StoreError(f"{path} cannot be read: {error}; not imported") from error
    except StoreError as error:
        raise StoreError(f"{error}; not imported") from error


def check_fingerprint(snapshot: Path, theirs: Fingerprint, mine: Fingerprint, whose: str) -> None:
    """StoreError unless the snapshot was made with the same backbone, adapter and config."""
    if theirs != mine:
        raise StoreError(
            f"{snapshot} was made with another adapter or backbone ({describe(theirs)}) than {whose} "
            f"({describe(mine)}); not imported"
        )
