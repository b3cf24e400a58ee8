"""One choice's stream when the request client hands it several tokens at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

import orchestrator.models
from orchestrator.frontend.generation import ChoiceOptions, choice_stream
from orchestrator.frontend.preprocess import ModelTokenizer
from orchestrator.planes import messages as m

TINY = Path(orchestrator.models.__file__).parent / "tiny"
TEXT = "The quick brown fox jumps over the lazy dog, then naps in the warm afternoon sun."


class FakeDispatcher:
    def __init__(self, chunks: list[m.Chunk]):
        self.chunks = chunks

    async def generate(self, model, request, pin=None):
        for chunk in self.chunks:
            yield chunk


@pytest.fixture(scope="module")
def tiny() -> ModelTokenizer:
    return ModelTokenizer.load(TINY)


def run(tiny: ModelTokenizer, chunks: list[m.Chunk], stop: list[str]) -> list:
    dispatcher = FakeDispatcher(chunks)
    request = m.GenerateRequest("r", token_ids=[1, 2, 3])

    async def collect():
        model = SimpleNamespace(tokenizer=tiny)
        return [d async for d in choice_stream(dispatcher, model, request, ChoiceOptions(stop=stop))]

    return asyncio.run(collect())


def merged(ids: list[int], cut: int) -> list[m.Chunk]:
    """The answer as two merged chunks with logprobs (-0.0, -1.0, ...), the last one final."""
    logprobs = [-float(i) for i in range(len(ids))]
    return [
        m.Chunk("r", token_ids=ids[:cut], logprobs=logprobs[:cut]),
        m.Chunk("r", token_ids=ids[cut:], logprobs=logprobs[cut:], finish_reason="length",
                prompt_tokens=3, completion_tokens=len(ids)),
    ]


def test_a_stop_string_across_merged_chunks_ends_the_choice_at_its_token(tiny):
    ids = tiny.encode(TEXT)
    cut = len(ids) // 2
    boundary = len(tiny.decode(ids[:cut]))
    stop = TEXT[boundary - 3 : boundary + 4]  # straddles the two chunks
    deltas = run(tiny, merged(ids, cut), [stop])
    text = "".join(d.text for d in deltas)
    assert text == TEXT[: TEXT.index(stop)]
    assert deltas[-1].finish_reason == "stop"
    # The choice ends at the token that completed the stop string, as if tokens had come one by one.
    through = next(n for n in range(1, len(ids) + 1) if stop in tiny.decode(ids[:n]))
    assert deltas[-1].usage.completion_tokens == through < len(ids)
    tokens = [t for d in deltas for t in d.token_ids]
    assert tokens == ids[:through]
    assert [lp for d in deltas for lp in d.logprobs] == [-float(i) for i in range(through)]


def test_merged_chunks_without_a_stop_string_keep_everything(tiny):
    ids = tiny.encode(TEXT)
    deltas = run(tiny, merged(ids, 5), [])
    assert "".join(d.text for d in deltas) == TEXT
    assert [t for d in deltas for t in d.token_ids] == ids
    assert [lp for d in deltas for lp in d.logprobs] == [-float(i) for i in range(len(ids))]
    assert deltas[-1].finish_reason == "length" and deltas[-1].usage.completion_tokens == len(ids)


def test_a_stop_string_in_the_final_merged_chunk_counts_only_tokens_up_to_it(tiny):
    ids = tiny.encode(TEXT)
    stop = "lazy"
    deltas = run(tiny, [m.Chunk("r", token_ids=ids, finish_reason="length", prompt_tokens=3,
                                   completion_tokens=len(ids))], [stop])
    through = next(n for n in range(1, len(ids) + 1) if stop in tiny.decode(ids[:n]))
    assert "".join(d.text for d in deltas) == TEXT[: TEXT.index(stop)]
    assert deltas[-1].finish_reason == "stop" and deltas[-1].usage.completion_tokens == through
