"""Student adapters: any peft method by name, or ``full`` fine-tuning.

Short names map to peft types (``lora``, ``prefix``, ``prompt``, ``ia3``, ``adaption_prompt`` /
``llama_adapter``); every other peft type is accepted by its own name (``loha``, ``vera``...).
Options are passed to that method's peft config, with a few friendly spellings
(``alpha`` → ``lora_alpha``). The adapter init is seeded, so every replica of a round starts
from identical weights without coordinating.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

from distillq.core.job.spec import PeftSpec
from distillq.errors import SpecError
from distillq.storage.atomic import read_json, write_json

# peft (and torch under it) is imported inside the functions that need it, for start-up time:
# core.job imports this module, and `status` must not load peft.

FULL = "full"
ALIASES = {
    "lora": "LORA",
    "prefix": "PREFIX_TUNING",
    "prompt": "PROMPT_TUNING",
    "ia3": "IA3",
    "adaption_prompt": "ADAPTION_PROMPT",
    "llama_adapter": "ADAPTION_PROMPT",
}
FRIENDLY_KEYS = {
    "LORA": {"alpha": "lora_alpha", "dropout": "lora_dropout"},
    "ADALORA": {"alpha": "lora_alpha", "dropout": "lora_dropout"},
}
# Prompt-learning methods need a length; these are small, sensible starting points.
DEFAULTS: dict[str, dict[str, Any]] = {
    "PREFIX_TUNING": {"num_virtual_tokens": 8},
    "PROMPT_TUNING": {"num_virtual_tokens": 8},
    "P_TUNING": {"num_virtual_tokens": 8, "encoder_hidden_size": 128},
    "ADAPTION_PROMPT": {"adapter_len": 8, "adapter_layers": 1},
}


def peft_types() -> list[str]:
    from peft import PeftType

    return [t.value for t in PeftType]


def valid_methods() -> list[str]:
    names = set(ALIASES) | {t.lower() for t in peft_types()} | {FULL}
    return sorted(names)


def resolve(method: str) -> str:
    """The peft type name (``LORA``...) for ``method``, or ``full``. Raises SpecError."""
    m = method.lower()
    if m == FULL:
        return FULL
    if m in ALIASES:
        return ALIASES[m]
    if m.upper() in peft_types():
        return m.upper()
    raise SpecError(f"unknown PEFT method {method!r}; valid: {', '.join(valid_methods())}")


def make_config(peft: PeftSpec) -> Any:
    """A peft config for ``peft`` (None for full). Raises SpecError."""
    options = peft.as_dict()
    ptype = resolve(str(options["method"]))
    if ptype == FULL:
        extra = set(options) - {"method"}
        if extra:
            raise SpecError(f"peft method full takes no options, got {sorted(extra)}")
        return None
    from peft import PeftType
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    cls = PEFT_TYPE_TO_CONFIG_MAPPING[PeftType(ptype)]
    kwargs = dict(DEFAULTS.get(ptype, {}))
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in options.items():
        if key == "method":
            continue
        key = FRIENDLY_KEYS.get(ptype, {}).get(key, key)
        if key not in names:
            raise SpecError(
                f"peft option {key!r} is not an option of {ptype}; options: {', '.join(sorted(names))}"
            )
        kwargs[key] = value
    kwargs["task_type"] = "CAUSAL_LM"
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise SpecError(f"peft {ptype} options are invalid: {e}") from None


def check(peft: PeftSpec, memo: Path | None = None, model: str | None = None) -> str | None:
    """Raise SpecError unless ``peft`` makes a valid peft config (by building it) that
    applies to ``model``'s architecture (by attaching it to the model built on the meta
    device: no weights are read, no memory is taken).

    ``memo``: a JSON file of option sets already checked under this peft version (and this
    model config). Importing peft costs seconds; an `enqueue` that repeats a checked set skips
    it. Returns the set's digest when it was newly checked, for ``remember`` once the job
    exists (a refused enqueue leaves storage as it was).
    """
    arch = _config_text(model) if model else ""
    key = json.dumps(
        {"peft": _installed("peft"), "options": peft.as_dict(), "defaults": DEFAULTS, "arch": arch},
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    if digest in _known(memo):
        return None
    config = make_config(peft)
    if config is not None and model:
        _applies(config, peft.method, model)
    return digest


def _config_text(model: str) -> str:
    path = Path(model) / "config.json"
    try:
        return path.read_text()
    except OSError:
        return model  # a hub id: its config is found when the model loads


def _applies(config: Any, method: str, model: str) -> None:
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        model_config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError):
        return  # loading the model names this problem itself, with its own fix
    # A probe, not the real build: its warnings (deprecations, Conv1D's fan_in_fan_out) would
    # turn enqueue's one-line answers into three; the replica that builds it says them.
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        base = AutoModelForCausalLM.from_config(model_config)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            get_peft_model(base, config)
    except (ValueError, TypeError, KeyError, AttributeError, NotImplementedError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SpecError(
            f"peft {method} cannot be applied to {model} "
            f"({model_config.model_type}): {reason}; choose lora, ia3, prefix, prompt or full, "
            "or set its target_modules"
        ) from None


def remember(memo: Path, digests: list[str]) -> None:
    """Add option sets that passed ``check`` to ``memo``."""
    if digests:
        with contextlib.suppress(OSError):  # only a memo: never fail a job over it
            write_json(memo, sorted({*_known(memo), *digests})[-1000:])


def _known(memo: Path | None) -> set[str]:
    if memo is None or not memo.exists():
        return set()
    try:
        return set(read_json(memo))
    except (OSError, ValueError):
        return set()


def _installed(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


def wrap(base: Any, peft: PeftSpec, seed: int) -> Any:
    """``base`` with the adapter attached (or all parameters trainable for full), seeded init."""
    import torch

    config = make_config(peft)
    if config is None:
        base.requires_grad_(True)
        return base
    from peft import get_peft_model

    torch.manual_seed(seed)
    try:
        return get_peft_model(base, config)
    except (ValueError, TypeError, KeyError) as e:
        raise SpecError(
            f"peft {peft.method} cannot be applied to this model ({e}); "
            "set target_modules or choose another method"
        ) from None
