"""Exceptions a program raises."""

from __future__ import annotations


class ProgramError(Exception):
    """A program could not run as written (an unknown variable, a role misused, ...)."""


class RequestError(ProgramError):
    """The backend refused or failed a request; `status` is the HTTP status when there is one.

    The message is the backend's own (the server's error message, the engine's ValueError).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ConstrainedDecodingUnsupported(RequestError):
    """A `gen` asked for a regex, dtype or JSON schema that the backend cannot enforce."""


def is_constraint_refusal(message: str) -> bool:
    """Whether a backend's error message says that constrained decoding is unavailable."""
    lowered = message.lower()
    names = ("regex", "json_schema", "constrained decoding", "response_format")
    return "not supported" in lowered and any(n in lowered for n in names)
