"""Chat templates, rendered the way transformers renders them.

A model's chat template is Jinja written against transformers' environment, so this
module reproduces that environment exactly: a sandbox that cannot mutate its inputs,
`trim_blocks`/`lstrip_blocks`, loop controls, the `{% generation %}` tag, a `tojson`
that keeps non-ASCII text and takes `indent`, and the `raise_exception` and
`strftime_now` globals. The template sees `messages`, `tools`, `documents`,
`add_generation_prompt` and whatever else the caller passes (the tokenizer passes its
special tokens: `bos_token`, `eos_token`, ...).

One deliberate difference from transformers: a message whose `content` is a list of
only text parts reaches the template as one string, the parts joined with newlines.
Dynamo's frontend does the same, because every template handles a string while many
(`'<|user|>' + message['content']`) fail on a list. Lists holding anything else
(images) pass through untouched for templates that understand them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplate:
    """A model's chat template(s), compiled once when the tokenizer loads.

    `source` is what tokenizer_config.json holds: one template, or a list of
    `{"name", "template"}` entries from which `render` picks `tool_use` when tools are
    given and `default` otherwise (transformers' rule). `render` keeps no state, so
    one instance serves every request.
    """

    def __init__(self, source: str | Sequence[Mapping[str, str]]):
        env = _environment()
        named = {"default": source} if isinstance(source, str) else {t["name"]: t["template"] for t in source}
        self._templates = {name: env.from_string(text) for name, text in named.items()}

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: list[dict] | None = None,
        add_generation_prompt: bool = True,
        **variables: Any,
    ) -> str:
        """The prompt text; any failure to render this conversation is a `TemplateError`."""
        context = {"documents": None, **variables}
        context.update(
            messages=[_with_text_content(message) for message in messages],
            tools=tools,
            add_generation_prompt=add_generation_prompt,
        )
        template = self._select(tools)
        try:
            return template.render(context)
        except TemplateError:
            raise
        except Exception as error:
            # Template code is the model's, the data the client's: a TypeError (say,
            # `'<|user|>' + content` with content null) is this request's fault too.
            raise TemplateError(f"the chat template cannot render this conversation: {error}") from error

    def _select(self, tools: list[dict] | None):
        if tools is not None and "tool_use" in self._templates:
            return self._templates["tool_use"]
        if "default" in self._templates:
            return self._templates["default"]
        raise TemplateError(
            f"no 'default' chat template among {sorted(self._templates)} and no tools to pick 'tool_use'"
        )


def _with_text_content(message: Mapping[str, Any]) -> Mapping[str, Any]:
    content = message.get("content")
    if isinstance(content, list) and content and all(_is_text_part(part) for part in content):
        return {**message, "content": "\n".join(part["text"] for part in content)}
    return message


def _is_text_part(part: Any) -> bool:
    return isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks.

    transformers uses the marks only when asked for an assistant mask; rendering keeps
    the body as is, which is all a server needs. Templates that use the tag would not
    even compile without it.
    """

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller) -> str:
        return caller()


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False
) -> str:
    # Jinja's own tojson escapes HTML characters (<, >, &, ') for embedding in web pages,
    # which would change the prompt; templates are written against transformers' plain json.dumps.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str):
    raise TemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)
