"""The one exception a request can end with, and OpenAI's error body for it.

`RequestError` carries everything an HTTP response needs: the status and the
`{"error": {message, type, param, code}}` body. The helpers name the few failures
the frontend answers; OpenAI clients pick their exception class from the status
alone (400 `BadRequestError`, 404 `NotFoundError`, 413 `APIStatusError`, 5xx
`InternalServerError`, retried by default), so the type and code are for people
and for clients that branch on `code`.
"""

from __future__ import annotations

from typing import Any

INVALID_REQUEST = "invalid_request_error"
# OpenAI reports its own 500 and 503 as type "server_error"; `code` tells them apart.
SERVER_ERROR = "server_error"


class RequestError(Exception):
    """A request that ends with an HTTP error status and OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str, *, type: str = INVALID_REQUEST, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object; every key is present, unknown ones as null."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def invalid_request(message: str, param: str | None = None) -> RequestError:
    return RequestError(400, message, param=param)


def model_not_found(model: str) -> RequestError:
    # OpenAI's wording and code; `param` is ours, so the client sees which field to fix.
    return RequestError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def context_length_exceeded(
    prompt_tokens: int, max_tokens: int | None, context_length: int, param: str
) -> RequestError:
    """The prompt (plus the requested output, when bounded) does not fit the context.

    400, as OpenAI answers it: 413 is for bodies over the size limit, not for prompts.
    `param` is "messages", "prompt" or "input".
    """
    wanted = f"{prompt_tokens} in the prompt" + ("" if max_tokens is None else f" + {max_tokens} to generate")
    return RequestError(
        400,
        f"This model's maximum context length is {context_length} tokens, but the request needs {wanted}.",
        param=param,
        code="context_length_exceeded",
    )


def payload_too_large(limit_bytes: int) -> RequestError:
    return RequestError(413, f"The request body exceeds the limit of {limit_bytes} bytes.", code="payload_too_large")


def service_unavailable(message: str) -> RequestError:
    """No worker can take the request now (none registered, all draining, overloaded).

    503 makes OpenAI clients retry with backoff, which is what the caller should do.
    """
    return RequestError(503, message, type=SERVER_ERROR, code="service_unavailable")


def internal_error(message: str = "The server had an error while processing your request.") -> RequestError:
    return RequestError(500, message, type=SERVER_ERROR, code="internal_error")
