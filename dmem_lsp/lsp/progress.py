"""Work-done progress: the progress the server starts (loading, a background explanation) and
the progress of a request whose client sent a ``workDoneToken``.

Every method takes a token that may be None (the client shows no progress) and then does
nothing. A request's progress reports tokens as the worker decodes them, every
``REPORT_EVERY``; the client cancelling it (``window/workDoneProgress/cancel``) cancels the
request as ``$/cancelRequest`` would.

``Progress`` is a part of ``DmemServer`` (server.py). pygls' ``work_done_progress.tokens``
(documented: the futures of the tokens it knows) is read and cleaned only here.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from lsprotocol import types
from pygls.lsp.server import LanguageServer

__all__ = ["Progress", "REPORT_EVERY"]

log = logging.getLogger(__name__)

REPORT_EVERY = 8
"""Tokens between two progress reports of a request that carries a workDoneToken."""


class Progress(LanguageServer):
    """``$/progress`` as the server and its requests send it."""

    async def create_progress(self) -> str | None:
        """A token the client accepted (window/workDoneProgress/create); None if it shows no progress."""
        window = self.client_capabilities.window
        if not (window and window.work_done_progress):
            return None
        token = f"dmem-{uuid.uuid4()}"
        try:
            await self.work_done_progress.create_async(token)
        except Exception as error:
            log.warning("the client refused a progress token: %s", error)
            return None
        return token

    async def begin_progress(self, title: str, message: str = "") -> str | None:
        token = await self.create_progress()
        if token is not None:
            self.work_done_progress.begin(token, types.WorkDoneProgressBegin(title=title, message=message))
        return token

    def report_progress(self, token: str | None, message: str) -> None:
        if token is not None:
            self.work_done_progress.report(token, types.WorkDoneProgressReport(message=message))

    def end_progress(self, token: types.ProgressToken | None, message: str) -> None:
        if token is not None:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))
            self.forget_progress(token)

    def forget_progress(self, token: types.ProgressToken | None) -> None:
        """Let pygls drop a token that ended (it keeps every token's future until told)."""
        if token is not None:
            self.work_done_progress.tokens.pop(token, None)

    def request_progress(self, name: str, token: types.ProgressToken | None) -> Callable[[int], None]:
        """Begin the client's progress for request ``name`` (run by the current task); the callback
        reports tokens from the worker. End it with ``end_request_progress``."""
        if token is None:
            return lambda count: None
        self.work_done_progress.begin(token, types.WorkDoneProgressBegin(title=f"dmem: {name}", cancellable=True))
        task = asyncio.current_task()
        # window/workDoneProgress/cancel cancels this future: treat it as $/cancelRequest
        self.work_done_progress.tokens[token].add_done_callback(
            lambda future: task.cancel() if future.cancelled() and task is not None else None
        )
        loop = asyncio.get_running_loop()

        def on_token(count: int) -> None:
            if count % REPORT_EVERY == 1 or REPORT_EVERY == 1:
                value = types.WorkDoneProgressReport(message=f"{count} tokens")
                loop.call_soon_threadsafe(self.work_done_progress.report, token, value)

        return on_token
