"""Incremental detokenization: the text each new chunk of token ids adds to a stream.

The prefix/read-offset algorithm of vLLM, TGI and SGLang (also behind `tokenizers`'
DecodeStream). The decoder keeps a short window of recent tokens: a prefix, whose text
was already emitted, then the tokens not yet accounted for. Each step decodes only the
window and emits what it adds. Decoding a window rather than single tokens is what
makes this exact: a character whose bytes span several byte-level BPE tokens appears
only once all of them are in, and a decoder that treats the first token specially
(SentencePiece drops its leading space) sees the same first token in the prefix and in
the window. Once the window decodes cleanly it slides forward, so each step costs
O(window), not O(output). Skipped special tokens change no decode, not even of the
bytes around them, so they never enter the window.

Two additions to the usual algorithm:
- When the window ends in U+FFFD (a character may still be arriving) only that last
  run of replacement characters is held; the text before it is final and goes out at
  once, where the usual algorithm holds the whole step.
- A model stuck emitting invalid bytes never decodes cleanly, and the window would
  grow without end. For byte-level BPE (a `ByteLevel` decoder) a window holding more
  than `_MAX_HELD` tokens is split three tokens before its end, emitting up to there.
  That is exact: three bytes settle any UTF-8 sequence begun before the split, so a
  character still arriving starts after it; and the lossy UTF-8 decoding of
  `tokenizers` turns a sequence cut short, or broken, into exactly one U+FFFD, so text
  positions agree on both sides of a split even one that cuts through a character.
  Other decoders are not split: SentencePiece's byte fallback decodes a whole run of
  byte tokens at once, all or nothing.

That byte fallback rule is also the one case no stream can match exactly: an invalid
byte makes its whole run U+FFFD in a one-shot decode, including characters of the run
that were complete, and already streamed, before it arrived.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from tokenizers import decoders

_REPLACEMENT = "\ufffd"
# Real text holds at most a few tokens (a character is at most 4 bytes); beyond this
# the held tokens are degenerate and a byte-level window is split.
_MAX_HELD = 8
# Tokens kept after a split, each at least one byte: 3 bytes settle any UTF-8 sequence.
_SETTLE = 3


class _Tokenizer(Protocol):
    decoder: object

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDecoder:
    """The detokenizer of one output stream.

    Lifecycle: `step` with each chunk of new token ids, then `flush` once at the end.
    Everything returned, concatenated, equals `tokenizer.decode(all ids)` (see above
    for byte fallback's exception). A piece holds U+FFFD only where the ids truly
    decode to one (bytes that are not UTF-8), never for a character still arriving.
    """

    def __init__(
        self, tokenizer: _Tokenizer, skip_special_tokens: bool = True, special_token_ids: Collection[int] = ()
    ):
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._skipped = frozenset(special_token_ids) if skip_special_tokens else frozenset()
        self._splittable = isinstance(tokenizer.decoder, decoders.ByteLevel)
        self._ids: list[int] = []  # the window
        self._read = 0  # ids[:read] is the prefix, whose text is all emitted
        self._emitted = 0  # characters of decode(ids) already emitted

    def step(self, token_ids: list[int]) -> str:
        """The new text these tokens add (empty while a character is incomplete)."""
        token_ids = [token for token in token_ids if token not in self._skipped]
        if not token_ids:
            return ""
        self._ids.extend(token_ids)
        text = self._decode(self._ids)
        if not text.endswith(_REPLACEMENT):
            return self._advance(len(self._ids), text)
        piece = self._take(text, len(text.rstrip(_REPLACEMENT)))
        if self._splittable and len(self._ids) - self._read > _MAX_HELD:
            split = len(self._ids) - _SETTLE
            piece += self._advance(split, self._decode(self._ids[:split]))
        return piece

    def flush(self) -> str:
        """Whatever is still held: replacement characters, for bytes that never completed."""
        return self._advance(len(self._ids), self._decode(self._ids))

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def _take(self, text: str, end: int) -> str:
        piece = text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        return piece

    def _advance(self, boundary: int, head: str) -> str:
        """Emit through token `boundary` (`head` = decode(ids[:boundary])) and make it the read offset.

        The window then starts at the old read offset, so the new prefix keeps the
        context a decoder may need for the token after it.
        """
        piece = self._take(head, len(head))
        beyond = self._emitted - len(head)  # emitted from tokens after the boundary
        start, self._read = self._read, boundary - self._read
        del self._ids[:start]
        self._emitted = len(self._decode(self._ids[: self._read])) + beyond
        return piece
