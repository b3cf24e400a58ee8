"""The tiny model that ships with the package loads offline and matches conf/model/tiny.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
from tokenizers import Tokenizer

from tests.support import compose_config


def tiny_dir() -> Path:
    return Path(compose_config().model.path)


def test_tokenizer_round_trips_text_offline():
    tokenizer = Tokenizer.from_file(str(tiny_dir() / "tokenizer.json"))
    text = "Hello, world! 你好 🙂"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.get_vocab_size() > 100_000, "a real vocabulary, not a toy"


def test_chat_template_renders_a_conversation():
    config = json.loads((tiny_dir() / "tokenizer_config.json").read_text())
    bos, eos = (token["content"] if isinstance(token, dict) else token for token in (config["bos_token"], config["eos_token"]))
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, **kw: json.dumps(value, ensure_ascii=False, **kw)
    prompt = env.from_string(config["chat_template"]).render(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        add_generation_prompt=True,
        bos_token=bos,
        eos_token=eos,
    )
    assert prompt.startswith(bos) and "Be brief." in prompt and "Hi" in prompt
    assert prompt.endswith("<｜Assistant｜>")


def test_architecture_numbers_match_config_json():
    model = compose_config().model
    hf = json.loads((tiny_dir() / "config.json").read_text())
    assert (model.hidden_size, model.num_layers, model.num_kv_heads, model.head_dim, model.context_length) == (
        hf["hidden_size"],
        hf["num_hidden_layers"],
        hf["num_key_value_heads"],
        hf["head_dim"],
        hf["max_position_embeddings"],
    )
    h, kv = hf["hidden_size"], hf["num_key_value_heads"] * hf["head_dim"]
    q = hf["num_attention_heads"] * hf["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * hf["intermediate_size"] + 2 * h
    assert model.num_params == 2 * hf["vocab_size"] * h + hf["num_hidden_layers"] * per_layer + h
