"""Deterministic tokens, stops, logprobs and embeddings of the mock engine."""

from __future__ import annotations

import math

from orchestrator.engine.mock.tokens import TokenModel, embedding
from orchestrator.planes.messages import SamplingOptions, StopConditions

MODEL = TokenModel(vocab_size=32000, eos_token_ids=(2, 3))


def generate(prompt: list[int], max_tokens: int, sampling=SamplingOptions(), **stop_fields) -> tuple[list[int], tuple]:
    """The engine's decode loop without the engine."""
    stop = StopConditions(max_tokens=max_tokens, **stop_fields)
    sequence, out = list(prompt), []
    while True:
        token = MODEL.next_token(sequence, len(out), sampling, stop)
        sequence.append(token)
        out.append(token)
        finish = MODEL.finish(token, len(out), stop, max_tokens)
        if finish:
            return out, finish


def eos_prompt() -> tuple[list[int], list[int]]:
    """A prompt whose output ends with EOS after at least 5 tokens (searched deterministically)."""
    for start in range(1000, 100000, 97):
        prompt = list(range(start, start + 10))
        out, finish = generate(prompt, 300)
        if finish[0] == "stop" and len(out) > 5:
            return prompt, out
    raise AssertionError("no prompt reaches EOS")


def test_output_is_a_function_of_the_sequence_so_far():
    prompt = list(range(500, 520))
    out, _ = generate(prompt, 40, ignore_eos=True)
    assert out == generate(prompt, 40, ignore_eos=True)[0]
    assert len(set(out)) > 30  # not a constant
    rest, _ = generate(prompt + out[:15], 25, ignore_eos=True)
    assert rest == out[15:]
    assert generate(prompt, 40, SamplingOptions(seed=7), ignore_eos=True)[0] != out
    # Temperature is ignored on purpose: continuation must hold for sampled requests too.
    assert generate(prompt, 40, SamplingOptions(temperature=0.0), ignore_eos=True)[0] == out


def test_eos_ends_with_the_first_eos_id_unless_ignored():
    prompt, out = eos_prompt()
    assert out[-1] == 2 and 2 not in out[:-1] and 3 not in out
    assert generate(prompt, 300)[1] == ("stop", 2)
    ignored, finish = generate(prompt, len(out) + 20, ignore_eos=True)
    assert finish == ("length", None) and not {2, 3} & set(ignored)
    assert ignored[: len(out) - 1] == out[:-1]  # the same path up to where EOS was
    held, _ = generate(prompt, 300, min_tokens=len(out) + 3)
    assert len(held) > len(out) and 2 not in held[: len(out) + 3]


def test_user_stop_ids_stop_even_with_ignore_eos_but_not_before_min_tokens():
    prompt = list(range(700, 720))
    out, _ = generate(prompt, 30, ignore_eos=True)
    target = next(t for i, t in enumerate(out) if i >= 5 and t not in out[:i])
    index = out.index(target)
    stopped, finish = generate(prompt, 30, ignore_eos=True, stop_token_ids=(target,))
    assert stopped == out[: index + 1] and finish == ("stop", target)
    late, _ = generate(prompt, 30, ignore_eos=True, stop_token_ids=(target,), min_tokens=index + 2)
    assert len(late) >= index + 2 and target not in late[: index + 2]


def test_max_tokens_ends_with_length():
    out, finish = generate(list(range(10)), 7, ignore_eos=True)
    assert len(out) == 7 and finish == ("length", None)


def test_logprobs_are_negative_and_the_chosen_token_comes_first():
    sequence = list(range(30))
    chosen, top = MODEL.logprobs(sequence, 1234, 5)
    assert chosen < 0
    assert len(top) == 5 and top[0].token_id == 1234 and top[0].logprob == chosen
    assert all(a.logprob > b.logprob for a, b in zip(top, top[1:]))
    assert MODEL.logprobs(sequence, 1234, 5) == (chosen, top)
    assert MODEL.logprobs(sequence, 1234, 0)[1] == []


def test_embeddings_are_deterministic_unit_vectors():
    vector = embedding([1, 2, 3], 64)
    assert len(vector) == 64 and math.isclose(sum(x * x for x in vector), 1.0)
    assert vector == embedding([1, 2, 3], 64)
    assert vector != embedding([1, 2, 4], 64)


def test_echo_repeats_the_prompt_then_ends():
    echo = TokenModel(vocab_size=32000, eos_token_ids=(2,), echo=True)
    prompt, out = [7, 8, 9], []
    while True:
        token = echo.next_token(prompt + out, len(out), SamplingOptions(), StopConditions(max_tokens=10))
        out.append(token)
        if echo.finish(token, len(out), StopConditions(max_tokens=10), 10):
            break
    assert out == [7, 8, 9, 2]
