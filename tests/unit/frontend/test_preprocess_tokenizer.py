"""The bundled tiny model's tokenizer and chat template load offline and produce the
prompts and token ids transformers would."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest
from jinja2.exceptions import TemplateError

import orchestrator.models
from orchestrator.frontend.preprocess import ModelTokenizer

TINY = Path(orchestrator.models.__file__).parent / "tiny"
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Température actuelle à une ville, en °C",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def tiny() -> ModelTokenizer:
    return ModelTokenizer.load(TINY)


def model_copy(tmp_path: Path, tokenizer_config: dict | None = None, **files: str) -> Path:
    """A copy of the tiny model directory, with tokenizer_config.json edits and extra files."""
    target = tmp_path / "model"
    shutil.copytree(TINY, target)
    if tokenizer_config:
        config = json.loads((target / "tokenizer_config.json").read_text())
        (target / "tokenizer_config.json").write_text(json.dumps({**config, **tokenizer_config}))
    for name, text in files.items():
        (target / name).write_text(text)
    return target


def test_loads_the_tiny_model_offline_with_its_ids(tiny):
    assert tiny.vocab_size == 129_280
    assert tiny.bos_token_id == 0
    assert tiny.eos_token_ids == (1,)
    assert {0, 1} <= tiny.special_token_ids
    assert tiny.encode(USER)[0] not in tiny.special_token_ids, "chat markers are added tokens but not special"


def test_encode_decode_round_trip_without_bos(tiny):
    text = "Hello, world! 你好 🙂 naïve café"
    ids = tiny.encode(text)
    assert ids[0] != tiny.bos_token_id
    assert tiny.decode(ids) == text


def test_special_tokens_in_text_encode_as_single_ids(tiny):
    assert tiny.encode(f"{BOS}{USER}Hi{EOS}") == [0, 128803, *tiny.encode("Hi"), 1]


def test_chat_template_renders_system_and_user_exactly(tiny):
    prompt = tiny.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert prompt == f"{BOS}Be brief.{USER}Hi{ASSISTANT}"
    assert tiny.encode(prompt)[0] == tiny.bos_token_id


def test_chat_template_without_generation_prompt_ends_after_the_last_turn(tiny):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert tiny.apply_chat_template(messages, add_generation_prompt=False) == f"{BOS}{USER}Hi{ASSISTANT}Hello!{EOS}"


def test_tools_are_rendered_into_the_prompt_as_unescaped_json(tiny):
    prompt = tiny.apply_chat_template([{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER])
    assert prompt == (
        f"{BOS}# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        + json.dumps(WEATHER, ensure_ascii=False)
        + "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
        'within <tool_call></tool_call> XML tags:\n<tool_call>{"name": <function-name>, '
        f'"arguments": <args-json-object>}}</tool_call>{USER}Weather in Paris?{ASSISTANT}'
    )
    assert "Température" in prompt and "°C" in prompt


def test_assistant_tool_calls_and_null_content_render(tiny):
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
        },
        {"role": "tool", "content": "21 °C"},
    ]
    assert tiny.apply_chat_template(messages) == (
        f'{BOS}{USER}Weather in Paris?{ASSISTANT}<tool_call>{{"name": "get_weather", "arguments": {{"city": "Paris"}}}}'
        f"</tool_call>{EOS}{USER}<tool_response>21 °C</tool_response>{ASSISTANT}"
    )


def test_content_as_text_parts_is_joined_and_the_request_left_untouched(tiny):
    parts = [{"type": "text", "text": "part 1"}, {"type": "text", "text": "part 2"}]
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": parts},
    ]
    assert tiny.apply_chat_template(messages) == f"{BOS}Be brief.{USER}part 1\npart 2{ASSISTANT}"
    assert messages[1]["content"] is parts


def test_template_errors_surface_as_template_error(tiny, tmp_path):
    with pytest.raises(TemplateError, match="Unsupported message role: robot"):
        tiny.apply_chat_template([{"role": "robot", "content": "beep"}])
    strict = ModelTokenizer.load(model_copy(tmp_path, {"chat_template": "{{ messages[0].content + '!' }}"}))
    with pytest.raises(TemplateError, match="cannot render"):
        strict.apply_chat_template([{"role": "user", "content": None}])


def test_missing_tokenizer_json_is_named(tmp_path):
    model = model_copy(tmp_path)
    (model / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        ModelTokenizer.load(model)


def test_missing_tokenizer_config_is_named(tmp_path):
    model = model_copy(tmp_path)
    (model / "tokenizer_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer_config\.json"):
        ModelTokenizer.load(model)


def test_encode_prompt_adds_no_bos_when_add_bos_token_is_false(tiny):
    assert tiny.encode_prompt("Hello") == tiny.encode("Hello")


def test_encode_prompt_follows_add_bos_and_add_eos_token(tmp_path, tiny):
    with_bos = ModelTokenizer.load(model_copy(tmp_path / "bos", {"add_bos_token": True}))
    assert with_bos.encode_prompt("Hello") == [0, *tiny.encode("Hello")]
    assert with_bos.encode("Hello") == tiny.encode("Hello"), "encode never adds BOS"
    with_both = ModelTokenizer.load(model_copy(tmp_path / "both", {"add_bos_token": True, "add_eos_token": True}))
    assert with_both.encode_prompt("Hello") == [0, *tiny.encode("Hello"), 1]


def test_encode_prompt_leaves_bos_to_the_post_processor_without_explicit_flags(tmp_path, tiny):
    tokenizer = json.loads((TINY / "tokenizer.json").read_text())
    tokenizer["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {BOS: {"id": BOS, "ids": [0], "tokens": [BOS]}},
    }
    config = json.loads((TINY / "tokenizer_config.json").read_text())
    del config["add_bos_token"], config["add_eos_token"]
    model = model_copy(
        tmp_path / "post", **{"tokenizer.json": json.dumps(tokenizer), "tokenizer_config.json": json.dumps(config)}
    )
    assert ModelTokenizer.load(model).encode_prompt("Hello") == [0, *tiny.encode("Hello")]
    # An explicit add_bos_token: false overrides the post-processor, as transformers rebuilds it.
    config["add_bos_token"] = False
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    assert ModelTokenizer.load(model).encode_prompt("Hello") == tiny.encode("Hello")


def test_eos_ids_merge_config_json_list_and_tokenizer_eos(tmp_path):
    model = model_copy(tmp_path)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "eos_token_id": [128805, 1]}))
    assert ModelTokenizer.load(model).eos_token_ids == (128805, 1)


def test_bos_falls_back_to_config_json(tmp_path):
    config = json.loads((TINY / "tokenizer_config.json").read_text())
    del config["bos_token"]
    model = model_copy(tmp_path, **{"tokenizer_config.json": json.dumps(config)})
    assert ModelTokenizer.load(model).bos_token_id == 0
    (model / "config.json").unlink()
    assert ModelTokenizer.load(model).bos_token_id is None


def test_truncation_saved_in_tokenizer_json_never_cuts_a_prompt(tmp_path, tiny):
    tokenizer = json.loads((TINY / "tokenizer.json").read_text())
    tokenizer["truncation"] = {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0}
    loaded = ModelTokenizer.load(model_copy(tmp_path, **{"tokenizer.json": json.dumps(tokenizer)}))
    text = "one two three four five six seven"
    assert loaded.encode(text) == loaded.encode_prompt(text) == tiny.encode(text)
    assert len(tiny.encode(text)) > 4


def test_special_tokens_given_as_plain_strings(tmp_path):
    loaded = ModelTokenizer.load(model_copy(tmp_path, {"bos_token": BOS, "eos_token": EOS}))
    assert (loaded.bos_token_id, loaded.eos_token_ids) == (0, (1,))
    assert loaded.apply_chat_template([{"role": "user", "content": "Hi"}]) == f"{BOS}{USER}Hi{ASSISTANT}"


def test_chat_template_jinja_file_wins_and_has_transformers_helpers(tmp_path):
    template = (
        "{{ bos_token }}{{ strftime_now('%Y') }}|{{ messages[0].content | tojson(indent=1) }}|"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
        "{% generation %}{{ m.role }}{% endgeneration %}{% endfor %}|{{ flavour }}|"
        "{{ documents is none }}|{{ pad_token }}|{{ additional_special_tokens | join(',') }}\n"
        "  {% if add_generation_prompt %}\nprompt\n  {% endif %}\nend"  # trim_blocks, lstrip_blocks
    )
    extra = {"additional_special_tokens": [{"__type": "AddedToken", "content": USER}, ASSISTANT]}
    loaded = ModelTokenizer.load(model_copy(tmp_path, extra, **{"chat_template.jinja": template}))
    prompt = loaded.apply_chat_template([{"role": "user", "content": ["é"]}, {"role": "x"}], flavour="mint")
    assert prompt == f'{BOS}{datetime.now().year}|[\n "é"\n]|user|mint|True|{EOS}|{USER},{ASSISTANT}\nprompt\nend'


def test_named_templates_pick_tool_use_when_tools_are_given(tmp_path):
    named = [{"name": "default", "template": "plain"}, {"name": "tool_use", "template": "tools:{{ tools | length }}"}]
    loaded = ModelTokenizer.load(model_copy(tmp_path, {"chat_template": named}))
    assert loaded.apply_chat_template([{"role": "user", "content": "Hi"}]) == "plain"
    assert loaded.apply_chat_template([{"role": "user", "content": "Hi"}], tools=[WEATHER]) == "tools:1"


def test_a_model_without_chat_template_still_encodes(tmp_path):
    config = json.loads((TINY / "tokenizer_config.json").read_text())
    del config["chat_template"]
    loaded = ModelTokenizer.load(model_copy(tmp_path, **{"tokenizer_config.json": json.dumps(config)}))
    assert loaded.encode_prompt("Hi") == loaded.encode("Hi")
    with pytest.raises(TemplateError, match="no chat template"):
        loaded.apply_chat_template([{"role": "user", "content": "Hi"}])
