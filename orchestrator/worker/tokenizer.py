"""Tokenizing on the worker, for the modes where the worker gets text: an embedding
worker, and a generating worker that does not run with `--skip-tokenizer-init`."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from orchestrator.errors import BootError


def load_tokenizer(model_dir: Path) -> Tokenizer:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise BootError(f"no tokenizer.json in {model_dir}", "pass --tokenizer-path, or --skip-tokenizer-init")
    return Tokenizer.from_file(str(path))


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """As SGLang's tokenizer manager does for a prompt: special tokens in the text stay
    special, nothing is added (a chat template already put BOS where it belongs)."""
    return tokenizer.encode(text, add_special_tokens=False).ids
