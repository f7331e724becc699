"""The server's errors as exceptions."""
from __future__ import annotations

from typing import Optional


class SimsiamError(Exception):
    """The server answered with an error.

    `status` is the HTTP status, `code` and `message` the server's own fields
    (`bad_image`, `overloaded`, ...; see the server's error table), `type` and `param`
    the OpenAI-style fields it also sends.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        type: Optional[str] = None,
        param: Optional[str] = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.type = type
        self.param = param


class InsufficientStorage(SimsiamError):
    """507: the server's gallery disk is full, so nothing was written.

    Not retried: it fails the same way until an operator frees space. Searches and
    embeddings keep working meanwhile.
    """


class ConnectionFailed(SimsiamError):
    """No answer: the server could not be reached (after the retries)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "connection_failed", message)
