"""Server-Sent Events framing of OpenAI streams.

Every event is one `data:` line with compact JSON and a blank line; the stream ends
with `data: [DONE]`. An error after the response has started (status 200 already
sent) travels as an event whose JSON is OpenAI's error body: OpenAI's clients check
each event for an `error` key and raise `APIError` with its message.
"""

from __future__ import annotations

from typing import Any

import msgspec

from orchestrator.frontend.openai.errors import RequestError

SSE_DONE = b"data: [DONE]\n\n"

# Compact JSON never holds a raw newline (they are escaped inside strings), so each
# event stays on one `data:` line as SSE requires.
_encode = msgspec.json.Encoder().encode


def sse_event(obj: Any) -> bytes:
    return b"data: " + _encode(obj) + b"\n\n"


def sse_error(error: RequestError) -> bytes:
    """The event that ends a stream with an error; send `SSE_DONE` after it."""
    return sse_event(error.body())
