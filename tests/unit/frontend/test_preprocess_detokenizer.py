"""Streamed detokenization with the tiny model's byte-level BPE: exact totals, no
half characters, text out as soon as it is complete, bounded work per token."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, normalizers
from tokenizers.models import BPE
from tokenizers.pre_tokenizers import ByteLevel

import orchestrator.models
from orchestrator.frontend.preprocess import IncrementalDecoder, ModelTokenizer

TINY = Path(orchestrator.models.__file__).parent / "tiny"
FFFD = "\ufffd"
TEXTS = [
    "héllo wörld",
    "你好世界",
    "🙂👍🏽",
    "Hello 👋 world",  # " 👋" splits into " " + a lead byte, then the rest
    "Grüße, 世界! 🙂👍🏽 ok 🇫🇷 naïve café 😀 日本語テキスト мир",
]


@pytest.fixture(scope="module")
def tiny() -> ModelTokenizer:
    return ModelTokenizer.load(TINY)


@pytest.fixture(scope="module")
def raw() -> Tokenizer:
    return Tokenizer.from_file(str(TINY / "tokenizer.json"))


@pytest.fixture(scope="module")
def byte_tokens(raw):
    """The single-byte tokens spelling `text`'s UTF-8 bytes, one token per byte."""

    def spell(text: str) -> list[int]:
        ((spelled, _),) = ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)
        return [raw.token_to_id(char) for char in spelled]

    return spell


@pytest.fixture(scope="module")
def lone_lead_byte(tiny, byte_tokens) -> int:
    """Byte 0xE4 alone: the lead byte of most CJK characters, invalid without what follows."""
    (token,) = byte_tokens("你")[:1]
    assert tiny.decode([token]) == FFFD
    return token


class CountingTokenizer:
    """The real tokenizer, counting how many token ids the decoder makes it decode."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self.decoder = tokenizer.decoder
        self.decoded = 0

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        self.decoded += len(ids)
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def stream(decoder: IncrementalDecoder, ids: list[int], chunk: int = 1) -> list[str]:
    pieces = [decoder.step(ids[i : i + chunk]) for i in range(0, len(ids), chunk)]
    return [*pieces, decoder.flush()]


def test_the_texts_split_characters_across_tokens(tiny):
    for text in TEXTS[2:]:
        assert any(FFFD in tiny.decode([i]) for i in tiny.encode(text)), text
    assert tiny.decode(tiny.encode("Hello 👋 world")[1:2]) == " " + FFFD


@pytest.mark.parametrize("text", TEXTS)
def test_multibyte_text_one_token_at_a_time(tiny, text):
    ids = tiny.encode(text)
    decoder, emitted = tiny.decoder(), ""
    for i in range(len(ids)):
        piece = decoder.step([ids[i]])
        assert FFFD not in piece
        emitted += piece
        # Out as soon as complete: everything but a character still arriving.
        assert emitted == tiny.decode(ids[: i + 1]).rstrip(FFFD)
    assert emitted + decoder.flush() == text


@pytest.mark.parametrize("chunk", [2, 3, 7])
def test_multibyte_text_in_chunks(tiny, chunk):
    ids = tiny.encode(TEXTS[-1])
    pieces = stream(tiny.decoder(), ids, chunk)
    assert "".join(pieces) == TEXTS[-1]
    assert not any(FFFD in piece for piece in pieces)


def test_special_tokens_skipped_or_kept(tiny):
    ids = [*tiny.encode("Hi"), 1, *tiny.encode("<｜User｜> there 🙂")]
    assert "".join(stream(tiny.decoder(skip_special_tokens=True), ids)) == "Hi<｜User｜> there 🙂"
    assert "".join(stream(tiny.decoder(skip_special_tokens=False), ids)) == "Hi<｜end▁of▁sentence｜><｜User｜> there 🙂"


def test_a_skipped_special_token_inside_a_character_does_not_break_it(tiny, lone_lead_byte):
    lead, *rest = tiny.encode("🙂")
    pieces = stream(tiny.decoder(), [lead, 1, *rest])
    assert "".join(pieces) == "🙂" and not any(FFFD in piece for piece in pieces)
    # Also after invalid bytes long enough to make the decoder split its window:
    # skipped tokens carry no bytes, so they cannot settle the character before them.
    ids = [lone_lead_byte] * 12 + [lead] + [1] * 12 + rest
    assert "".join(stream(tiny.decoder(), ids)) == FFFD * 12 + "🙂" == tiny.decode(ids)


def test_splitting_a_long_window_never_cuts_a_character(tiny, byte_tokens, lone_lead_byte):
    assert len(byte_tokens("🙂")) == 4 and tiny.decode(byte_tokens("🙂")) == "🙂"
    text = "🙂你好é"
    for invalid in range(8, 20):  # every alignment of the window splits against the characters
        ids = [lone_lead_byte] * invalid + byte_tokens(text) + [lone_lead_byte]
        for chunk in (1, 2, 5):
            pieces = stream(tiny.decoder(), ids, chunk)
            assert "".join(pieces) == FFFD * invalid + text + FFFD, (invalid, chunk)


def test_flush_releases_bytes_that_never_completed(tiny):
    ids = tiny.encode("ok 👍🏽")[:-1]
    decoder = tiny.decoder()
    assert "".join(decoder.step([i]) for i in ids) == "ok 👍"
    assert decoder.flush() == FFFD == tiny.decode(ids)[len("ok 👍") :]


@pytest.mark.parametrize("skip", [True, False])
def test_long_random_generation_totals_decode_exactly(tiny, skip):
    rng = random.Random(20240611)
    ids = [rng.randrange(tiny.vocab_size) for _ in range(2000)]
    assert "".join(stream(tiny.decoder(skip), ids)) == tiny.decode(ids, skip)
    chunked, i = tiny.decoder(skip), 0
    pieces = []
    while i < len(ids):
        size = rng.randint(1, 20)
        pieces.append(chunked.step(ids[i : i + size]))
        i += size
    assert "".join(pieces) + chunked.flush() == tiny.decode(ids, skip)


def test_work_per_token_is_bounded_even_for_invalid_byte_runs(tiny, raw, lone_lead_byte):
    rng = random.Random(7)
    runs = {
        "random ids": [rng.randrange(tiny.vocab_size) for _ in range(3000)],
        "a model stuck on one lead byte": [lone_lead_byte] * 3000,
        "invalid bytes around valid text": ([lone_lead_byte] * 40 + tiny.encode(TEXTS[-1])) * 30,
    }
    for name, ids in runs.items():
        for chunk in (1, 5, 13):  # chunks end mid-character, so split points can straddle one
            counting = CountingTokenizer(raw)
            decoder = IncrementalDecoder(counting, True, tiny.special_token_ids)
            assert "".join(stream(decoder, ids, chunk)) == tiny.decode(ids), (name, chunk)
            assert counting.decoded < 40 * len(ids), f"{name}: {counting.decoded / len(ids):.0f} ids decoded per token"


def sentencepiece_like() -> Tokenizer:
    """A Llama-2-style tokenizer: "▁" for spaces, byte fallback, the first space stripped."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for piece in ("▁", "a", "b", "o", "k", "ok", "▁a", "▁b"):
        vocab[piece] = len(vocab)
    merges = [("▁", "a"), ("▁", "b"), ("o", "k")]
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens(["<s>", "</s>"])
    return tokenizer


def test_sentencepiece_byte_fallback_streams_exactly():
    tokenizer = sentencepiece_like()
    a, b = tokenizer.token_to_id("a"), tokenizer.token_to_id("▁b")
    cases = [
        (tokenizer.encode("a ok é 🙂 b €").ids, [1] * 20),
        ([a, 1, b], [1, 1, 1]),  # a skipped token must not cost "b" its space
        # All byte tokens, one run: byte fallback decodes a run all or nothing, so a
        # long window of them must not be split.
        (tokenizer.encode("€🙂€").ids[1:], [1, 5, 3, 1]),
    ]
    for ids, chunks in cases:
        assert sum(chunks) >= len(ids)
        decoder, pieces, at = IncrementalDecoder(tokenizer, True, {1, 2}), [], 0
        for size in chunks:
            pieces.append(decoder.step(ids[at : at + size]))
            at += size
        assert "".join(pieces) + decoder.flush() == tokenizer.decode(ids), ids
