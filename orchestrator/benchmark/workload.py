"""The requests a benchmark sends, built from the config and its seed alone.

Prompts are lists of token ids (`/v1/completions` accepts `"prompt": [ids...]`), so
input lengths are exact without a tokenizer and two runs with the same seed send the
same tokens. Ids are drawn from `TOKEN_RANGE`, clear of the special tokens at the start
of a vocabulary and inside any vocabulary of 100k ids or more.

Every workload is a list of sessions. A session is one conversation whose turns are
sent one after another; a single-turn request is a session of one turn. A turn holds
only the tokens it adds: for a single-turn request that is the whole prompt, for a
multi-turn conversation the new user segment (the load generator prepends the history:
the previous prompt and the previous answer).

- synthetic: `num_requests` requests of ISL/OSL drawn from a normal (clipped to >= 1).
- shared_prefix: `num_prefixes` prefixes of `shared_prefix_len` tokens, given round-robin;
  each request is its prefix and a unique suffix up to its ISL.
- multi_turn: `num_requests` counts requests (turns), as in every other workload, so
  throughputs compare across workloads: ceil(num_requests / turns) conversations of
  `turns` turns, the last one shorter when `turns` does not divide `num_requests`.
- trace: the first `num_requests` lines of a Mooncake-style JSONL trace
  (`timestamp` ms, `input_length`, `output_length`, `hash_ids`); each hash id names one
  block of `block_size` tokens, the same id the same tokens, so shared prefixes in the
  trace are shared in the prompts. A request's last partial block, and any blocks its
  hash ids do not cover, are tokens of its own. Arrivals are the timestamps, relative
  to the first line, divided by `trace_speedup`.

Warm-up requests are synthetic requests of the configured ISL/OSL from their own
random stream: they warm connections and the engine without touching the measured
workload's prefixes.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.config.schema import BenchmarkConfig

TOKEN_RANGE = range(1000, 100_000)
WORKLOADS = ("synthetic", "shared_prefix", "multi_turn", "trace")


class WorkloadError(ValueError):
    """The config or the trace cannot describe a workload; the message names the cause."""


@dataclass(frozen=True)
class Turn:
    segment: list[int]  # the tokens this turn adds to the conversation
    osl: int


@dataclass(frozen=True)
class Session:
    id: int
    turns: list[Turn]
    arrival_s: float | None = None  # trace: seconds after the start; otherwise the schedule decides


@dataclass(frozen=True)
class Workload:
    sessions: list[Session]
    warmup: list[Session] = field(default_factory=list)

    @property
    def timed(self) -> bool:
        """The sessions carry their own arrival times (a trace)."""
        return bool(self.sessions) and self.sessions[0].arrival_s is not None

    @property
    def num_requests(self) -> int:
        return sum(len(s.turns) for s in self.sessions)


def build_workload(cfg: BenchmarkConfig) -> Workload:
    if cfg.workload not in WORKLOADS:
        raise WorkloadError(f"unknown workload {cfg.workload!r}; one of {', '.join(WORKLOADS)}")
    if cfg.num_requests < 1:
        raise WorkloadError("num_requests must be at least 1")
    rng = random.Random(cfg.seed)
    if cfg.workload == "synthetic":
        sessions = [_single(i, _tokens(rng, _length(rng, cfg.isl, cfg.isl_stddev)), cfg, rng)
                    for i in range(cfg.num_requests)]
    elif cfg.workload == "shared_prefix":
        sessions = _shared_prefix(cfg, rng)
    elif cfg.workload == "multi_turn":
        sessions = _multi_turn(cfg, rng)
    else:
        sessions = _trace(cfg, cfg.trace_block_size)
    warm = random.Random(f"{cfg.seed}/warmup")
    warmup = [_single(-1 - i, _tokens(warm, _length(warm, cfg.isl, cfg.isl_stddev)), cfg, warm)
              for i in range(cfg.warmup_requests)]
    return Workload(sessions, warmup)


def _single(i: int, prompt: list[int], cfg: BenchmarkConfig, rng: random.Random) -> Session:
    return Session(i, [Turn(prompt, _length(rng, cfg.osl, cfg.osl_stddev))])


def _shared_prefix(cfg: BenchmarkConfig, rng: random.Random) -> list[Session]:
    if cfg.shared_prefix_len < 1 or cfg.num_prefixes < 1:
        raise WorkloadError("the shared_prefix workload needs shared_prefix_len >= 1 and num_prefixes >= 1")
    prefixes = [_tokens(rng, cfg.shared_prefix_len) for _ in range(cfg.num_prefixes)]
    sessions = []
    for i in range(cfg.num_requests):
        prefix = prefixes[i % len(prefixes)]
        isl = max(len(prefix) + 1, _length(rng, cfg.isl, cfg.isl_stddev))  # at least one unique token
        sessions.append(_single(i, prefix + _tokens(rng, isl - len(prefix)), cfg, rng))
    return sessions


def _multi_turn(cfg: BenchmarkConfig, rng: random.Random) -> list[Session]:
    if cfg.turns < 1:
        raise WorkloadError("the multi_turn workload needs turns >= 1")
    sessions = []
    for c in range(math.ceil(cfg.num_requests / cfg.turns)):
        n = min(cfg.turns, cfg.num_requests - c * cfg.turns)
        turns = [Turn(_tokens(rng, _length(rng, cfg.isl, cfg.isl_stddev)), _length(rng, cfg.osl, cfg.osl_stddev))
                 for _ in range(n)]
        sessions.append(Session(c, turns))
    return sessions


@dataclass(frozen=True)
class TraceLine:
    timestamp_ms: float
    input_length: int
    output_length: int
    hash_ids: list[int]


def load_trace(path: str | Path, limit: int | None = None) -> list[TraceLine]:
    """The trace's first `limit` lines; a WorkloadError names the first bad line."""
    lines: list[TraceLine] = []
    try:
        with open(path) as f:
            for number, text in enumerate(f, 1):
                if limit is not None and len(lines) >= limit:
                    break
                if text.strip():
                    lines.append(_trace_line(text, f"{path}:{number}"))
    except OSError as e:
        raise WorkloadError(f"cannot read the trace: {e}") from e
    if not lines:
        raise WorkloadError(f"the trace {path} has no requests")
    return lines


def _trace_line(text: str, where: str) -> TraceLine:
    try:
        obj = json.loads(text)
        line = TraceLine(float(obj["timestamp"]), int(obj["input_length"]), int(obj["output_length"]),
                         [int(h) for h in obj.get("hash_ids", [])])
    except (ValueError, KeyError, TypeError) as e:
        raise WorkloadError(f"{where}: not a trace line ({type(e).__name__}: {e})") from e
    if line.input_length < 1 or line.output_length < 1:
        raise WorkloadError(f"{where}: input_length and output_length must be at least 1")
    return line


def _trace(cfg: BenchmarkConfig, block_size: int) -> list[Session]:
    if not cfg.trace:
        raise WorkloadError("the trace workload needs benchmark.trace (a JSONL file)")
    if cfg.trace_speedup <= 0:
        raise WorkloadError("trace_speedup must be positive")
    lines = load_trace(cfg.trace, cfg.num_requests)
    unique = random.Random(f"{cfg.seed}/unique")
    blocks: dict[int, list[int]] = {}
    start = lines[0].timestamp_ms
    sessions = []
    for i, line in enumerate(lines):
        full = min(line.input_length // block_size, len(line.hash_ids))
        prompt: list[int] = []
        for h in line.hash_ids[:full]:
            if h not in blocks:
                blocks[h] = _tokens(random.Random(f"{cfg.seed}/block/{h}"), block_size)
            prompt += blocks[h]
        prompt += _tokens(unique, line.input_length - len(prompt))
        arrival = (line.timestamp_ms - start) / 1000.0 / cfg.trace_speedup
        sessions.append(Session(i, [Turn(prompt, line.output_length)], arrival_s=max(0.0, arrival)))
    return sessions


def _length(rng: random.Random, mean: int, stddev: float) -> int:
    if stddev <= 0:
        return max(1, mean)
    return max(1, round(rng.gauss(mean, stddev)))


def _tokens(rng: random.Random, n: int) -> list[int]:
    return rng.choices(TOKEN_RANGE, k=n)


def load_tokenizer(path: str | Path):
    """The `tokenizers` tokenizer of a model directory (or of a tokenizer.json itself),
    used to turn a multi-turn answer's text back into token ids."""
    from tokenizers import Tokenizer

    file = Path(path)
    if file.is_dir():
        file = file / "tokenizer.json"
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception for a missing or bad file
        raise WorkloadError(f"cannot load the tokenizer {file}: {e}") from e
