"""What the mock engine "samples": output tokens, logprobs, stop decisions and
embeddings, each a pure function of the sequence so far.

Every token is a hash of the last few tokens, the sequence length and the request's
seed. A request re-sent with its generated tokens appended therefore continues
exactly where it left off, which is how migration is verified token for token.
Temperature, top-p and penalties are deliberately ignored: a mock has no
distribution to sample from, and making the output depend on them would break that
continuation property for every sampled request while adding nothing a caller can
check. The seed does enter the hash, so different seeds give different outputs.
"""

from __future__ import annotations

import hashlib
import math
import random
import struct
from typing import Optional, Sequence

import xxhash

from orchestrator.planes.messages import SamplingOptions, StopConditions, TopLogprob

_MASK = (1 << 64) - 1
_CONTEXT = 4  # tokens of history the hash sees
_EOS_ODDS = 64  # one step in 64 ends the sequence when EOS is allowed


def _splitmix(value: int) -> int:
    z = (value + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


# (length, seed, the last tokens), packed for each count of last tokens the sequence has
_PACK = [struct.Struct(f"<{2 + n}Q").pack for n in range(_CONTEXT + 1)]


def _hash(sequence: Sequence[int], seed: Optional[int]) -> int:
    tail = sequence[-_CONTEXT:]
    return xxhash.xxh3_64_intdigest(_PACK[len(tail)](len(sequence), (seed or 0) & _MASK, *tail))


class TokenModel:
    """The deterministic "model" of one engine: vocabulary size and EOS ids."""

    def __init__(self, vocab_size: int, eos_token_ids: Sequence[int], echo: bool = False):
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(eos_token_ids)
        self._eos = frozenset(eos_token_ids)
        self.echo = echo  # repeat the prompt, then end: output with a structure tests can choose

    def next_token(self, sequence: Sequence[int], generated: int, sampling: SamplingOptions, stop: StopConditions) -> int:
        """The token after `sequence`, of which the last `generated` were produced by the model.

        EOS comes only from the 1-in-64 branch, and only when allowed (not
        `ignore_eos`, at least `min_tokens` generated); below `min_tokens` user stop
        ids are banned too, as SGLang's min-new-tokens penalizer masks them.
        """
        if self.echo:
            prompt_len = len(sequence) - generated
            if generated < prompt_len:
                return sequence[generated]
            return self.eos_token_ids[0] if self.eos_token_ids else sequence[-1]
        h = _hash(sequence, sampling.seed)
        allow_stop = generated >= stop.min_tokens
        if self.eos_token_ids and allow_stop and not stop.ignore_eos and h % _EOS_ODDS == 0:
            return self.eos_token_ids[0]
        banned = self._eos if allow_stop else self._eos | frozenset(stop.stop_token_ids)
        token = (h >> 6) % self.vocab_size
        for _ in range(len(banned) + 1):
            if token not in banned:
                break
            token = (token + 1) % self.vocab_size
        return token

    def finish(self, token: int, generated: int, stop: StopConditions, max_tokens: int) -> Optional[tuple[str, Optional[int]]]:
        """(finish_reason, matched_stop) once `token` made the output `generated` long, else None."""
        if generated > stop.min_tokens:  # the stop is the (min_tokens + 1)-th token or later
            if token in self._eos and not stop.ignore_eos:
                return "stop", token
            if token in stop.stop_token_ids:
                return "stop", token
        if generated >= max_tokens:
            return "length", None
        return None

    def logprobs(self, sequence: Sequence[int], token: int, count: int) -> tuple[float, list[TopLogprob]]:
        """A negative logprob for `token` and `count` alternatives: the token first, then lower ones."""
        h = _splitmix(_hash(sequence, None) ^ token)
        chosen = -((h % 4000) / 1000.0 + 0.001)
        top = [TopLogprob(token, chosen)]
        for rank in range(1, count):
            other = (token + rank * 7919) % self.vocab_size
            top.append(TopLogprob(other, chosen - rank * (0.5 + ((h >> (rank % 48)) % 100) / 100.0)))
        return chosen, top[:count]


def embedding(tokens: Sequence[int], dim: int) -> list[float]:
    """A unit-norm vector of `dim` floats that depends only on the tokens."""
    digest = hashlib.blake2b(struct.pack(f"<{len(tokens)}Q", *tokens), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest, "little"))
    vector = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]
