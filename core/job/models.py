"""Load causal LMs and tokenizers (local directory, or a hub id already downloaded); fingerprint them."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from distillq.core.maths.batching import Padded
from distillq.errors import ModelError

# torch, transformers and huggingface_hub are imported inside the functions that use them:
# `status` and `--help` import this module through core.job and must not pay seconds for them.


def device() -> str:
    """This process's device: what its worker assigned (``DISTILLQ_DEVICE``, see
    ``workers/devices.py``), else ``cuda`` when it sees a GPU, else ``cpu``. Called after
    fork, never at import."""
    import os

    chosen = os.environ.get("DISTILLQ_DEVICE")
    if chosen in ("cpu", "cuda"):
        return chosen
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# `org/name` or a legacy bare `name`, as the Hugging Face hub spells repository ids.
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[\w.-]+$")


def hub_like(ref: str) -> bool:
    return bool(_HUB_ID.match(ref)) and not ref.startswith(".")


def _in_hub_cache(ref: str, name: str) -> Path | None:
    """File ``name`` of hub id ``ref`` if it was downloaded before (``huggingface-cli download``)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(ref, name)
    except ValueError:  # not a valid repo id after all
        return None
    return Path(found) if isinstance(found, str) else None


def in_hub_cache(ref: str) -> bool:
    """``ref`` is a hub id whose model was downloaded before (config or tokenizer present)."""
    return hub_like(ref) and any(
        _in_hub_cache(ref, f) for f in ("config.json", "tokenizer_config.json")
    )


def _check_exists(ref: str, what: str) -> None:
    """Raise ModelError unless ``ref`` is a local directory or an already-downloaded hub id.

    distillq never downloads: every worker on every node would fetch the same weights at
    once, and a typo in a relative path (``models/x`` reads as a hub id) would surface as a
    network error minutes later on a worker instead of here.
    """
    if Path(ref).expanduser().exists():
        return
    looks_hub = hub_like(ref)
    if in_hub_cache(ref):
        return
    where = "no such directory" + (", nor in the Hugging Face cache" if looks_hub else "")
    raise ModelError(
        f"{what} {ref!r} does not exist: not found locally ({where}); "
        "distillq does not download models: pass a local directory"
    )


def check_loadable(ref: str, what: str) -> None:
    """Raise ModelError unless this node sees ``ref`` with a config and weights: what a worker
    checks before it takes a task for that model (enqueue checked it on another node)."""
    _check_exists(ref, what)
    local = Path(ref).expanduser()
    if not local.is_dir():
        return  # a hub id in the local cache: its files were checked by _check_exists
    weights = [*local.glob("*.safetensors"), *local.glob("*.bin"), *local.glob("*.index.json")]
    if not (local / "config.json").exists() or not weights:
        raise ModelError(
            f"{what} {ref!r} on this node has no config.json or no weight files; "
            "mount or copy the whole model directory here"
        )


def _model_file(ref: str, name: str) -> Path | None:
    """``name`` of model ``ref`` (a local directory or the hub cache), if it is there."""
    local = Path(ref).expanduser() / name
    if local.exists():
        return local
    return _in_hub_cache(ref, name) if hub_like(ref) else None


def model_config(ref: str) -> dict[str, Any]:
    """``config.json`` of ``ref`` as a dict (what enqueue checks needs, without transformers)."""
    path = _model_file(ref, "config.json")
    return dict(json.loads(path.read_text())) if path else {}


def config_vocab_size(ref: str) -> int:
    """Rows of the model's LM head, from its config (``text_config`` for multimodal ones)."""
    raw = model_config(ref)
    vocab = raw.get("vocab_size") or raw.get("text_config", {}).get("vocab_size")
    if vocab is None:
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(ref).vocab_size
    return int(vocab)


def _light_config(ref: str) -> Any:
    """A plain config carrying ``config.json``'s fields, or None when AutoTokenizer needs the
    model's own config class to choose a tokenizer.

    AutoTokenizer loads the model's config only to pick a tokenizer class; importing a model
    config class (LlamaConfig, ...) costs about a second of imports. When the tokenizer names
    its class in ``tokenizer_config.json`` (and brings no remote code), the choice is made from
    that name and the config's ``model_type`` alone, which a plain config carries too.
    """
    tok_file = _model_file(ref, "tokenizer_config.json")
    raw = model_config(ref)
    if tok_file is None or not raw.get("model_type"):
        return None
    tok_config = json.loads(tok_file.read_text())
    if not tok_config.get("tokenizer_class") or "auto_map" in tok_config or "auto_map" in raw:
        return None
    from transformers import PreTrainedConfig

    plain = type("PlainConfig", (PreTrainedConfig,), {"model_type": raw["model_type"]})
    return plain(**{k: v for k, v in raw.items() if k != "model_type"})


def load_tokenizer(ref: str, what: str = "model", light: bool = False) -> Any:
    """The model's tokenizer (pad = eos where it has none). ``light``: skip importing the
    model's config class where the tokenizer does not need it (see ``_light_config``)."""
    from transformers import AutoTokenizer

    _check_exists(ref, what)
    try:
        config = _light_config(ref) if light else None
        tok = AutoTokenizer.from_pretrained(ref, **({"config": config} if config else {}))
    except (OSError, ValueError) as e:
        raise ModelError(
            f"cannot load the tokenizer of {what} {ref!r}: {e}".split("\n")[0]
        ) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def cpu_has_bf16() -> bool:
    """This CPU computes bfloat16 natively (avx512_bf16, or AMX's tiles): where bf16 matmuls
    run faster than float32 instead of being emulated (measured in bench/teacher_cpu.py)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def teacher_dtype(choice: str) -> str:
    """``teacher.dtype`` resolved on this node: ``auto`` is bfloat16 on a GPU and on a CPU with
    native bfloat16, else float32."""
    if choice != "auto":
        return choice
    return "bfloat16" if device() == "cuda" or cpu_has_bf16() else "float32"


def sample_tokenizer(spec: Any) -> Any:
    """The tokenizer a job's samples are tokenized with (``spec``: a JobSpec): a transformers
    teacher's own; a GGUF teacher's (``gguf_sample_tokenizer``); a served one's
    ``teacher.tokenizer``, else the first student's."""
    t = spec.teacher
    if t is not None and not t.is_endpoint and not t.is_gguf:
        return load_tokenizer(t.model, "teacher model")
    if t is not None and t.is_gguf:
        return gguf_sample_tokenizer(spec)[0]
    if t is not None and t.tokenizer:
        return load_tokenizer(t.tokenizer, "teacher tokenizer")
    return load_tokenizer(spec.students[0].model)


def gguf_sample_tokenizer(spec: Any, light: bool = False) -> tuple[Any, str]:
    """The tokenizer a GGUF teacher's samples are tokenized with (``spec``: a JobSpec), and
    what it is, for messages: ``teacher.tokenizer`` (checked against the GGUF's tokens); else
    the first student's where it spells every id as the GGUF does (a directory loads in a
    moment); else the GGUF's own, rebuilt from its metadata: a student of another family then
    learns through alignment, with no ``teacher.tokenizer`` to find and set."""
    from distillq.core.job.gguf_models import check_tokenizer, load_gguf_tokenizer, read_info

    g = spec.teacher
    info = read_info(g.model)
    if g.tokenizer:
        tok = load_tokenizer(g.tokenizer, "teacher tokenizer", light=light)
        check_tokenizer(info, tok, f"the tokenizer of {g.tokenizer}")
        return tok, f"the tokenizer of {g.tokenizer}"
    if spec.students:
        s0 = spec.students[0]
        tok = load_tokenizer(s0.model, f"student {s0.name!r} model", light=light)
        try:
            check_tokenizer(info, tok, "")
            return tok, f"the tokenizer of {s0.model}"
        except ModelError:
            pass  # another family: the GGUF's own tokenizer, and alignment for the student
    return load_gguf_tokenizer(g.model), "the GGUF's own tokenizer"


def load_causal_lm(ref: str, what: str = "model", dtype: Any = None) -> Any:
    """A causal LM in eval mode on :func:`device`. float32 on CPU (fp16 matmuls crawl there)."""
    import torch
    from transformers import AutoModelForCausalLM

    _check_exists(ref, what)
    dev = device()
    if dtype is None:
        dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load {what} {ref!r}: {e}".split("\n")[0]) from None
    return model.to(dev).eval()  # type: ignore[arg-type]


def tokenizer_fingerprint(tok: Any) -> str:
    """sha256 over the vocabulary and special tokens: equal iff token ids mean the same text."""
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    special = {k: str(v) for k, v in sorted(tok.special_tokens_map.items())}
    payload = json.dumps({"vocab": vocab, "special": special}, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def model_fingerprint(ref: str) -> str:
    """sha256 over a local model's config and weight file names and sizes, or the hub id.

    Sizes, not contents: hashing tens of GB of weights at enqueue would cost minutes.
    """
    path = Path(ref).expanduser()
    if not path.is_dir():
        return hashlib.sha256(f"hub:{ref}".encode()).hexdigest()[:16]
    h = hashlib.sha256()
    config = path / "config.json"
    if config.exists():
        h.update(config.read_bytes())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def check_weights(ref: str, what: str) -> None:
    """Raise ModelError unless the local model ``ref`` has its weights, whole: at least one
    weight file, every shard its index names, and no safetensors file shorter than its header
    says. Headers only: a few KB read per file, whatever the model's size. A hub id passes
    (it is found, or not, when the model loads)."""
    path = Path(ref).expanduser()
    if not path.is_dir():
        return
    files = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    if not files:
        raise ModelError(
            f"{what} {ref} holds no weights (no *.safetensors or *.bin beside its config.json); "
            "copy the model's weight files into it"
        )
    index = path / "model.safetensors.index.json"
    if index.exists():
        missing = sorted(
            {f for f in json.loads(index.read_text()).get("weight_map", {}).values()}
            - {f.name for f in files}
        )
        if missing:
            raise ModelError(
                f"{what} {ref} lacks the weight shard {missing[0]} its index names "
                f"({len(missing)} missing); copy the model's weight files again"
            )
    for f in files:
        if f.suffix == ".safetensors":
            _check_safetensors(f, what)


def _check_safetensors(f: Path, what: str) -> None:
    size = f.stat().st_size
    try:
        with f.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or n > size:
                raise ValueError("no header")
            header = json.loads(fh.read(n))
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ModelError(
            f"{what} weights {f} are not a readable safetensors file ({e}); copy the file again"
        ) from None
    if size < 8 + n + end:
        raise ModelError(
            f"{what} weights {f} are truncated ({size:,} of {8 + n + end:,} bytes); "
            "copy the file again"
        )


def vocab_size(model: Any) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def on_device(batch: Padded, dev: Any) -> tuple[Any, Any, Any, Any, Any]:
    """(input_ids, attention_mask, rows, cols, labels) of ``batch`` as tensors on ``dev``."""
    import torch

    return tuple(  # type: ignore[return-value]
        torch.from_numpy(a).to(dev)
        for a in (batch.input_ids, batch.attention_mask, batch.rows, batch.cols, batch.labels)
    )
