"""Incremental detokenization: the text each new chunk of token ids adds to a stream.

The prefix/read-offset algorithm of vLLM, TGI and SGLang (Dynamo's frontend uses the
same one, from `tokenizers`' DecodeStream). The decoder keeps a short window of
recent tokens: a prefix, whose text was already emitted, then the tokens not yet
accounted for. Each step decodes only the window and emits what it adds beyond the
prefix. Decoding a window rather than single tokens is what makes this exact for every
decoder: a character whose bytes span several byte-level BPE tokens appears only once
all of them are in, and a decoder that treats the first token specially (SentencePiece
drops its leading space) sees the same first token in the prefix and in the window.

Text ending in U+FFFD may be a character still incomplete, so it is held; the text
before it is final and goes out at once. Once the window ends cleanly it slides
forward, which keeps every step O(window), not O(output).

Invalid bytes never complete, so a model stuck emitting them would grow the window
without end. Past `_MAX_HELD` tokens the window is split at a token boundary that no
character straddles (checked by decoding both sides) with enough bytes after it to
settle any sequence begun before it; the split is therefore permanent and the output
stays exact.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

_REPLACEMENT = "\ufffd"
# Real text holds at most a few tokens (a character is at most 4 bytes); beyond this
# the held tokens are degenerate and the window is split.
_MAX_HELD = 8
# Bytes after a split point that settle any UTF-8 sequence begun before it.
_SETTLE = 3
# Split points tried per step: one of 4 consecutive byte boundaries starts a character.
_SPLIT_TRIES = 4


class _Decodes(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDecoder:
    """The detokenizer of one output stream.

    Lifecycle: `step` with each chunk of new token ids, then `flush` once at the end.
    Everything returned, concatenated, equals `tokenizer.decode(all ids)`. A piece holds
    U+FFFD only where the ids truly decode to one (invalid bytes), never for a character
    that is still arriving.
    """

    def __init__(self, tokenizer: _Decodes, skip_special_tokens: bool = True, special_token_ids: Collection[int] = ()):
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        # Skipped special tokens decode to nothing, so they cannot settle a split.
        self._silent = frozenset(special_token_ids) if skip_special_tokens else frozenset()
        self._ids: list[int] = []  # the window
        self._read = 0  # ids[:read] is the prefix, whose text is all emitted
        self._emitted = 0  # characters of decode(ids) already emitted

    def step(self, token_ids: list[int]) -> str:
        """The new text these tokens add (possibly empty while a character is incomplete)."""
        if not token_ids:
            return ""
        self._ids.extend(token_ids)
        text = self._decode(self._ids)
        if not text.endswith(_REPLACEMENT):
            return self._advance(len(self._ids), text)
        piece = self._take(text, len(text.rstrip(_REPLACEMENT)))
        if len(self._ids) - self._read > _MAX_HELD:
            piece += self._split(text)
        return piece

    def flush(self) -> str:
        """Whatever is still held; replacement characters only for bytes that never completed."""
        return self._advance(len(self._ids), self._decode(self._ids))

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def _take(self, text: str, end: int) -> str:
        piece = text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        return piece

    def _advance(self, boundary: int, head: str) -> str:
        """Emit through token `boundary` (`head` = decode(ids[:boundary])) and make it the read offset.

        The window then starts at the old read offset: the new prefix keeps the context
        a decoder may need for the first token after it.
        """
        piece = self._take(head, len(head))
        beyond = self._emitted - len(head)  # already emitted from tokens after the boundary
        start, self._read = self._read, boundary - self._read
        del self._ids[:start]
        self._emitted = len(self._decode(self._ids[: self._read])) + beyond
        return piece

    def _split(self, text: str) -> str:
        settled, boundary = 0, len(self._ids)
        while boundary > self._read and settled < _SETTLE:
            boundary -= 1
            settled += self._ids[boundary] not in self._silent
        for candidate in range(boundary, max(self._read, boundary - _SPLIT_TRIES), -1):
            head = self._decode(self._ids[:candidate])
            if head + self._decode(self._ids[candidate:]) == text:
                return self._advance(candidate, head)
        return ""
