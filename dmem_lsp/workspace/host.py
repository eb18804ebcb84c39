"""What the workspace wing needs from the server that runs it: the ``Host`` protocol.

The workspace wing (``Learner`` and the modules it is made of) never imports the LSP wing.
It is handed a host — the language server (``dmem_lsp.lsp.server.DmemServer``), or a fake in
unit tests — and uses exactly this: tell the user, show progress, the engine and the inference
worker, the editor's text of a document, and a notification to the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from lsprotocol import types

if TYPE_CHECKING:
    from dmem_lsp.runtime.engine import Engine
    from dmem_lsp.runtime.settings import Settings
    from dmem_lsp.runtime.worker import Worker

__all__ = ["Host"]


class Host(Protocol):
    """The server as the workspace wing sees it. Every method is called on the event loop."""

    settings: Settings
    """The settings in force now (``settings.memory`` is the editor's memory settings)."""
    worker: Worker
    """The inference worker every write, reset and import runs on."""
    engine: Engine | None
    """The loaded engine (None until it is; folders open only once it is)."""

    def show(self, kind: types.MessageType, message: str) -> None:
        """Show ``message`` to the user (window/showMessage) and log it."""

    async def begin_progress(self, title: str, message: str = "") -> str | None:
        """Begin work-done progress; its token, or None when the client shows none."""

    def report_progress(self, token: str | None, message: str) -> None: ...

    def end_progress(self, token: str | None, message: str) -> None: ...

    async def wait_for_engine(self) -> Engine:
        """The engine once loaded; raises the load error if it did not load."""

    def editor_text(self, uri: str) -> str | None:
        """The text of ``uri`` as the editor has it open; None when it is not open."""

    def current_text(self, uri: str) -> str:
        """The editor's text of ``uri`` if it is open, else the file's; OSError when it cannot be read."""

    def notify_client(self, method: str, params: Any) -> None:
        """Send a notification to the client (``dmem/memory``)."""
