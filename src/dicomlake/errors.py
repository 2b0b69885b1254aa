"""Errors a user can cause, named by their google.rpc status; the API turns them into Google's error
envelope and the CLI into exit code 2 with the message."""

from __future__ import annotations


class DicomlakeError(Exception):
    status = "INTERNAL"
    http = 500
    code = 13

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DicomlakeError):
    status, http, code = "INVALID_ARGUMENT", 400, 3


class NotFound(DicomlakeError):
    status, http, code = "NOT_FOUND", 404, 5


class AlreadyExists(DicomlakeError):
    status, http, code = "ALREADY_EXISTS", 409, 6


class FailedPrecondition(DicomlakeError):
    status, http, code = "FAILED_PRECONDITION", 400, 9


class PreconditionFailed(DicomlakeError):
    """A conditional request (If-Match) on a resource that changed since the client read it (HTTP 412)."""

    status, http, code = "FAILED_PRECONDITION", 412, 9


class NotAcceptable(DicomlakeError):
    """No representation the client accepts can be produced (HTTP 406)."""

    status, http, code = "INVALID_ARGUMENT", 406, 3


class Unavailable(DicomlakeError):
    """A backend (object store, database) could not be reached or refused the request."""

    status, http, code = "UNAVAILABLE", 503, 14


class Unauthenticated(DicomlakeError):
    status, http, code = "UNAUTHENTICATED", 401, 16


class UnsupportedMediaType(DicomlakeError):
    status, http, code = "INVALID_ARGUMENT", 415, 3


class PayloadTooLarge(DicomlakeError):
    """A request body over what its route accepts (HTTP 413)."""

    status, http, code = "OUT_OF_RANGE", 413, 11
