"""A model's tokenizer, loaded from the local files of a Hugging Face model directory.

Owns what the frontend knows about a vocabulary: encoding chat prompts and raw
completion prompts, the BOS/EOS/special ids, one-shot decoding, and handing out the
chat template and per-stream incremental decoders. It reads `tokenizer.json` and
`tokenizer_config.json` (both required), `chat_template.jinja` and `config.json` when
present, and never touches the network.

Semantics follow transformers (v5 `TokenizersBackend`), so a prompt tokenizes here as
it would in SGLang or vLLM:
- Special tokens in tokenizer_config.json are `AddedToken` dicts or plain strings.
- `chat_template.jinja` beside the config takes precedence over the config's template.
- Padding and truncation saved in tokenizer.json are switched off: transformers only
  applies them when a call asks, and a server must never cut a prompt silently.
- Decoding does not apply `clean_up_tokenization_spaces`: a streamed decode cannot
  (the cleanup looks across token boundaries), and a one-shot decode must equal the
  stream.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2.exceptions import TemplateError
from tokenizers import Tokenizer

from orchestrator.frontend.preprocess.chat_template import ChatTemplate
from orchestrator.frontend.preprocess.detokenizer import IncrementalDecoder

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
MODEL_CONFIG_FILE = "config.json"

# The named special tokens transformers hands a chat template (its `special_tokens_map`).
_NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class ModelTokenizer:
    """Immutable once loaded; one instance serves every request of its model.

    Build it with `load`. Each output stream takes its own `decoder()`.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        config: Mapping[str, Any],
        model_config: Mapping[str, Any] | None = None,
        chat_template: ChatTemplate | None = None,
    ):
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        self._chat_template = chat_template
        self._template_tokens = _template_tokens(config)
        model_config = model_config or {}

        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        self.special_token_ids: frozenset[int] = frozenset(
            token_id for token_id, token in tokenizer.get_added_tokens_decoder().items() if token.special
        )
        self._bos = self._id_of(config.get("bos_token"))
        self._eos = self._id_of(config.get("eos_token"))
        config_bos = model_config.get("bos_token_id")
        self.bos_token_id: int | None = self._bos if self._bos is not None else config_bos
        config_eos = model_config.get("eos_token_id")
        config_eos = [config_eos] if isinstance(config_eos, int) else list(config_eos or ())
        self.eos_token_ids: tuple[int, ...] = tuple(
            dict.fromkeys(config_eos + ([self._eos] if self._eos is not None else []))
        )

        # transformers rebuilds the post-processor from add_bos_token/add_eos_token when
        # either key is present; otherwise tokenizer.json's post-processor decides.
        self._explicit_specials = "add_bos_token" in config or "add_eos_token" in config
        self._add_bos = bool(config.get("add_bos_token")) and self._bos is not None
        self._add_eos = bool(config.get("add_eos_token")) and self._eos is not None

    @classmethod
    def load(cls, model_dir: str | Path) -> ModelTokenizer:
        """Load from a local model directory; `FileNotFoundError` names any missing required file."""
        model_dir = Path(model_dir)
        missing = [name for name in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE) if not (model_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{model_dir} has no {' and no '.join(missing)}: a tokenizer needs both files")
        config = _read_json(model_dir / TOKENIZER_CONFIG_FILE)
        model_config = _read_json(model_dir / MODEL_CONFIG_FILE) if (model_dir / MODEL_CONFIG_FILE).is_file() else {}
        template_file = model_dir / CHAT_TEMPLATE_FILE
        source = template_file.read_text(encoding="utf-8") if template_file.is_file() else config.get("chat_template")
        return cls(
            Tokenizer.from_file(str(model_dir / TOKENIZER_FILE)),
            config,
            model_config,
            ChatTemplate(source) if source else None,
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` with no BOS/EOS added: a rendered chat template carries its own."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a raw /v1/completions prompt, with the special tokens transformers would add."""
        if not self._explicit_specials:
            return self._tokenizer.encode(text, add_special_tokens=True).ids
        return [self._bos] * self._add_bos + self.encode(text) + [self._eos] * self._add_eos

    def apply_chat_template(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> str:
        """The prompt text for a conversation; see `chat_template` for what the template sees.

        Raises `TemplateError` when the model has no chat template or its template rejects the conversation.
        """
        if self._chat_template is None:
            raise TemplateError(
                "this model has no chat template (none in tokenizer_config.json or chat_template.jinja)"
            )
        variables = {**self._template_tokens, **template_kwargs}
        return self._chat_template.render(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, **variables
        )

    def decoder(self, skip_special_tokens: bool = True) -> IncrementalDecoder:
        """A fresh incremental decoder for one output stream."""
        return IncrementalDecoder(self._tokenizer, skip_special_tokens, self.special_token_ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def _id_of(self, token: Any) -> int | None:
        content = _token_content(token)
        return None if content is None else self._tokenizer.token_to_id(content)


def _token_content(token: Any) -> str | None:
    """A special token as tokenizer_config.json spells it: an `AddedToken` dict, a string, or null."""
    return token.get("content") if isinstance(token, Mapping) else token


def _template_tokens(config: Mapping[str, Any]) -> dict[str, Any]:
    tokens: dict[str, Any] = {}
    for key in _NAMED_SPECIAL_TOKENS:
        content = _token_content(config.get(key))
        if content is not None:
            tokens[key] = content
    if config.get("additional_special_tokens"):
        tokens["additional_special_tokens"] = [_token_content(t) for t in config["additional_special_tokens"]]
    return tokens


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
