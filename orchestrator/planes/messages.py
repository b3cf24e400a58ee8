"""Typed messages of the request plane and their one codec (msgpack via msgspec).

A frontend sends `GenerateRequest`, `EmbedRequest` or `Cancel` to a worker; the
worker streams back `Chunk`s (the last one carries `finish_reason` and usage), one
`Embeddings`, or an `ErrorReply`. Every message names its request, so one connection
carries many requests at once. Messages made together for one connection travel as
one frame (`Requests`, `Replies`): a worker's replies of one scheduler step, say,
cost one send, not one per request.
"""

from __future__ import annotations

from typing import Optional, Union

import msgspec


class SamplingOptions(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: Optional[int] = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0


class StopConditions(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    max_tokens: int = 16
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()  # user stops; the model's EOS is added by the engine
    ignore_eos: bool = False


class BootstrapInfo(msgspec.Struct, forbid_unknown_fields=True):
    """Where a decode engine finds the prefill engine's KV (SGLang's bootstrap triple)."""

    host: str
    port: int
    room: int  # random in [0, 2**63 - 1], shared by the two legs of one request


class GenerateRequest(msgspec.Struct, tag="generate", omit_defaults=True, forbid_unknown_fields=True):
    request_id: str
    token_ids: list[int] = []
    text: Optional[str] = None  # only when the worker tokenizes (SGLang chat-processor mode)
    sampling: SamplingOptions = SamplingOptions()
    stop: StopConditions = StopConditions()
    top_logprobs: Optional[int] = None  # None: no logprobs; 0: the chosen token's only
    bootstrap: Optional[BootstrapInfo] = None
    dp_rank: Optional[int] = None  # routed DP rank; None lets the engine balance


class EmbedRequest(msgspec.Struct, tag="embed", omit_defaults=True, forbid_unknown_fields=True):
    request_id: str
    inputs: list[list[int]] = []  # token ids per input
    texts: list[str] = []  # or text per input, when the worker tokenizes


class Cancel(msgspec.Struct, tag="cancel", forbid_unknown_fields=True):
    request_id: str


class TopLogprob(msgspec.Struct, array_like=True):
    token_id: int
    logprob: float


class Chunk(msgspec.Struct, tag="chunk", omit_defaults=True):
    """New tokens of one request. The last chunk has `finish_reason` and usage."""

    request_id: str
    token_ids: list[int] = []
    logprobs: Optional[list[float]] = None  # one per new token
    top_logprobs: Optional[list[list[TopLogprob]]] = None
    finish_reason: Optional[str] = None  # stop | length | abort
    matched_stop: Optional[int] = None  # the stop token that ended the request
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    kv_transfer_s: Optional[float] = None  # a prefill leg's last chunk: how long its KV took to hand over

    def extend(self, later: Chunk) -> None:
        """Take in the next chunk of the same request, as if both had come as one: its
        tokens and logprobs follow ours, its finish and usage (set only on the last) win."""
        self.token_ids += later.token_ids
        if later.logprobs is not None:
            self.logprobs = (self.logprobs or []) + later.logprobs
        if later.top_logprobs is not None:
            self.top_logprobs = (self.top_logprobs or []) + later.top_logprobs
        self.finish_reason, self.matched_stop = later.finish_reason, later.matched_stop
        self.prompt_tokens, self.completion_tokens = later.prompt_tokens, later.completion_tokens
        self.cached_tokens = later.cached_tokens


class Embeddings(msgspec.Struct, tag="embeddings"):
    request_id: str
    embeddings: list[list[float]]
    prompt_tokens: int


class ErrorKind:
    """Why a request failed. `ENGINE_SHUTDOWN` and `DISCONNECTED` are migratable."""

    ENGINE_SHUTDOWN = "engine_shutdown"  # the worker is draining; resume elsewhere
    DISCONNECTED = "disconnected"
    INVALID = "invalid_request"  # e.g. prompt longer than the context
    OVERLOADED = "overloaded"
    BOOTSTRAP_TIMEOUT = "bootstrap_timeout"  # a disaggregated pair never met (or the prefill died first)
    INTERNAL = "internal"

    MIGRATABLE = frozenset({ENGINE_SHUTDOWN, DISCONNECTED})


class ErrorReply(msgspec.Struct, tag="error"):
    request_id: str
    kind: str
    message: str


ToWorker = Union[GenerateRequest, EmbedRequest, Cancel]
FromWorker = Union[Chunk, Embeddings, ErrorReply]


class Requests(msgspec.Struct, tag="requests"):
    """Several messages to one worker in one frame, in the order they were made."""

    messages: list[ToWorker]


class Replies(msgspec.Struct, tag="replies"):
    """Several replies to one frontend in one frame, in the order they were made."""

    replies: list[FromWorker]


_encoder = msgspec.msgpack.Encoder()
_to_worker = msgspec.msgpack.Decoder(ToWorker)
_from_worker = msgspec.msgpack.Decoder(FromWorker)
_to_worker_frame = msgspec.msgpack.Decoder(GenerateRequest | EmbedRequest | Cancel | Requests)
_frame = msgspec.msgpack.Decoder(Chunk | Embeddings | ErrorReply | Replies)


def encode(message: ToWorker | FromWorker) -> bytes:
    return _encoder.encode(message)


def decode_to_worker(data: bytes) -> ToWorker:
    return _to_worker.decode(data)


def decode_from_worker(data: bytes) -> FromWorker:
    return _from_worker.decode(data)


def encode_requests(messages: list[ToWorker]) -> bytes:
    """One frame for `messages`: a lone message as itself, several as `Requests`."""
    return _encoder.encode(messages[0] if len(messages) == 1 else Requests(messages))


def decode_requests(data: bytes) -> list[ToWorker]:
    """The messages in a frame a frontend sent (one message or `Requests`)."""
    message = _to_worker_frame.decode(data)
    return message.messages if isinstance(message, Requests) else [message]


def encode_replies(replies: list[FromWorker]) -> bytes:
    """One frame for `replies`: a lone reply as itself, several as `Replies`."""
    return _encoder.encode(replies[0] if len(replies) == 1 else Replies(replies))


def decode_replies(data: bytes) -> list[FromWorker]:
    """The replies in a frame a worker sent (one reply or `Replies`)."""
    message = _frame.decode(data)
    return message.replies if isinstance(message, Replies) else [message]
