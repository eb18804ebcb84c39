"""Open documents whose edits and positions cost no Python loop over the whole text.

pygls' ``TextDocument`` applies every incremental change by splitting the whole text into
lines and writing them all back one by one: about half a second per keystroke at the end
of a 16 MB document, on the event loop. ``Document`` applies the same change as one splice
of the text at the offsets ``positions.offset_at`` finds (the same offsets pygls' own
conversion gives), and answers ``offset_at_position`` the same way, keeping a
``LineCache`` across edits so that typing at one place costs no count from the top. ``use_documents``
makes a pygls ``Workspace`` create these, once ``initialize`` has built it.
"""

from __future__ import annotations

from lsprotocol import types
from pygls.workspace import TextDocument, Workspace

from dmem_lsp.lsp.positions import LineCache, offset_at

__all__ = ["Document", "use_documents"]


class Document(TextDocument):
    """A pygls ``TextDocument`` with text-length-proportional work left to C (slicing, counting)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lines = LineCache()

    def offset_at_position(self, client_position: types.Position) -> int:
        return offset_at(self, client_position, slow=super().offset_at_position, cache=self._lines)

    def _apply_incremental_change(self, change: types.TextDocumentContentChangePartial) -> None:
        end = self.offset_at_position(change.range.end)
        start = self.offset_at_position(change.range.start)  # last: the cache keeps this line
        if end < start:  # a backwards range: pygls' own, whatever it makes of it
            super()._apply_incremental_change(change)
            return
        source = self.source
        self._source = source[:start] + change.text + source[end:]
        self._lines.use(source).splice(self._source, start, end, change.text)


class _Workspace(Workspace):
    def _create_text_document(
        self, doc_uri: str, source: str | None = None, version: int | None = None, language_id: str | None = None
    ) -> TextDocument:
        return Document(
            doc_uri,
            source=source,
            version=version,
            language_id=language_id,
            sync_kind=self._sync_kind,
            position_codec=self._position_codec,
        )


def use_documents(workspace: Workspace) -> None:
    """Make ``workspace`` (built by pygls in ``initialize``) create ``Document``s from now on."""
    if type(workspace) is Workspace:
        workspace.__class__ = _Workspace
