"""The errors requests are answered with when they were valid but could not be served."""

from __future__ import annotations

import logging

from lsprotocol import types
from pygls.exceptions import JsonRpcException

__all__ = ["RequestFailed", "request_failure"]

log = logging.getLogger(__name__)


class RequestFailed(JsonRpcException):
    """LSP's RequestFailed: the request was valid but could not be served."""

    CODE = int(types.LSPErrorCodes.RequestFailed)


def request_failure(name: str, error: BaseException) -> JsonRpcException:
    """The answer to request ``name`` whose job raised ``error``: a JSON-RPC error as it is, CUDA
    running out of memory with what to change, anything else as RequestFailed (and logged)."""
    if isinstance(error, JsonRpcException):
        return error
    if type(error).__name__ == "OutOfMemoryError":
        return RequestFailed(
            f"{name}: CUDA ran out of memory; lower completion.prefixTokens, "
            "use --quantization nf4 or a smaller --model"
        )
    log.exception("%s failed", name, exc_info=error)
    return RequestFailed(f"{name} failed: {type(error).__name__}: {error}")
