"""An Ollama ``Modelfile`` for a GGUF: FROM, a TEMPLATE derived from the chat template, stops.

Ollama templates are Go templates, chat templates are Jinja: there is no general translation.
What a chat model needs from either is the text around each turn, so the Jinja template is
rendered with marker strings for the system prompt, the user turn and the assistant turn, and
the text between the markers becomes the literal parts of a Go template over Ollama's
``.System``, ``.Prompt`` and ``.Response``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillq.core.export.gguf.vocab import Vocab
from distillq.storage.atomic import write_bytes

_SYS, _USER, _ASSIST = "\x01SYSTEM\x01", "\x01USER\x01", "\x01ASSISTANT\x01"


@dataclass(frozen=True)
class TurnText:
    """The literal text around one exchange, as the chat template renders it."""

    system_prefix: str
    system_suffix: str
    user_prefix: str
    assistant_prefix: str
    assistant_suffix: str


def _render(template: str, vocab: Vocab, messages: list[dict[str, str]], gen: bool) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg: str) -> None:
        raise ValueError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    tokens: dict[str, Any] = {
        "bos_token": vocab.tokens[vocab.bos] if vocab.bos is not None else "",
        "eos_token": vocab.tokens[vocab.eos] if vocab.eos is not None else "",
    }
    return env.from_string(template).render(messages=messages, add_generation_prompt=gen, **tokens)


def turn_text(template: str, vocab: Vocab) -> TurnText:
    """Split the rendered template at the markers. ValueError if it does not render turns
    as one contiguous span each."""
    one = _render(template, vocab, [{"role": "user", "content": _USER}], gen=True)
    user_prefix, _, assistant_prefix = one.partition(_USER)
    done = _render(
        template,
        vocab,
        [{"role": "user", "content": _USER}, {"role": "assistant", "content": _ASSIST}],
        gen=False,
    )
    assistant_suffix = done.partition(_ASSIST)[2]
    try:
        sys_one = _render(
            template,
            vocab,
            [{"role": "system", "content": _SYS}, {"role": "user", "content": _USER}],
            gen=True,
        )
        before_user = sys_one.partition(_USER)[0]
        system_prefix, _, rest = before_user.partition(_SYS)
        system_suffix = rest.removesuffix(user_prefix)
        if _SYS not in before_user or not rest.endswith(user_prefix):
            raise ValueError("system turn not rendered where expected")
    except ValueError:  # a template that rejects a system role
        system_prefix = system_suffix = ""
    if not assistant_prefix and _USER not in one:
        raise ValueError("chat template does not render the user turn")
    return TurnText(system_prefix, system_suffix, user_prefix, assistant_prefix, assistant_suffix)


def go_template(t: TurnText) -> str:
    system = ""
    if t.system_prefix or t.system_suffix:
        system = (
            f"{{{{ if .System }}}}{t.system_prefix}{{{{ .System }}}}{t.system_suffix}{{{{ end }}}}"
        )
    return (
        f"{system}{t.user_prefix}{{{{ .Prompt }}}}{t.assistant_prefix}"
        f"{{{{ .Response }}}}{t.assistant_suffix}"
    )


def stop_tokens(vocab: Vocab, t: TurnText | None) -> list[str]:
    """EOS, and every control token that ends an assistant turn in the template."""
    stops = [vocab.tokens[vocab.eos]] if vocab.eos is not None else []
    if t is not None:
        stops += [s for s in vocab.special.values() if s in t.assistant_suffix and s not in stops]
    return stops


def modelfile_text(gguf_name: str, vocab: Vocab, context: int) -> str:
    """The Modelfile for ``gguf_name`` (a file name beside it)."""
    turns = None
    if vocab.chat_template:
        try:
            turns = turn_text(vocab.chat_template, vocab)
        except Exception:  # any template error: fall back to raw completion
            turns = None
    lines = [f"FROM ./{gguf_name}", ""]
    if turns is not None:
        lines += [f'TEMPLATE """{go_template(turns)}"""', ""]
    else:
        lines += ['TEMPLATE """{{ .Prompt }}"""', ""]
    for stop in stop_tokens(vocab, turns):
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    lines += [
        f"PARAMETER num_ctx {min(context, 4096)}",
        "PARAMETER temperature 0.7",
        "PARAMETER top_p 0.9",
        "",
    ]
    return "\n".join(lines)


def write_modelfile(path: Path, gguf_name: str, vocab: Vocab, context: int) -> Path:
    write_bytes(path, modelfile_text(gguf_name, vocab, context).encode())
    return path
