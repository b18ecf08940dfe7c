"""``ollama:NAME[:TAG]``: a model in Ollama's store, read from disk (Ollama itself need not run).

Ollama keeps one manifest per tag, ``manifests/<registry>/<namespace>/<name>/<tag>`` (a Docker
v2 manifest), whose layer of media type ``application/vnd.ollama.image.model`` names the
weights by digest; the weights are a GGUF at ``blobs/sha256-<hex>``. The store is
``$OLLAMA_MODELS``, else ``~/.ollama/models`` (what Ollama itself reads).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from distillq.errors import ModelError

PREFIX = "ollama:"
MODEL_LAYER = "application/vnd.ollama.image.model"
REGISTRY, NAMESPACE, TAG = "registry.ollama.ai", "library", "latest"


@dataclass(frozen=True)
class Resolved:
    gguf: Path
    digest: str
    """``sha256:<hex>`` of the GGUF: its content's name, so the fingerprint costs no hashing."""


def store() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models").expanduser()


def manifest_path(ref: str, root: Path | None = None) -> Path:
    """``qwen2.5:7b`` → ``<store>/manifests/registry.ollama.ai/library/qwen2.5/7b``; a name
    with a namespace (``user/model``) or a registry host (``host/user/model``) keeps it."""
    name = ref.removeprefix(PREFIX)
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    else:
        tag = TAG
    parts = name.split("/")
    if len(parts) == 1:
        parts = [REGISTRY, NAMESPACE, *parts]
    elif len(parts) == 2:
        parts = [REGISTRY, *parts]
    if not tag or any(not p or p in (".", "..") for p in parts):
        raise ModelError(f"teacher model {ref!r} is not an Ollama tag such as ollama:qwen2.5:7b")
    return (root or store()) / "manifests" / Path(*parts) / tag


def resolve(ref: str, root: Path | None = None) -> Resolved:
    """The GGUF blob of tag ``ref``. Raises ModelError, in one line, naming what is missing."""
    base = root or store()
    manifest = manifest_path(ref, base)
    if not manifest.exists():
        raise ModelError(
            f"teacher model {ref!r}: no Ollama manifest {manifest}; `ollama pull "
            f"{ref.removeprefix(PREFIX)}` on this node, or set OLLAMA_MODELS to the store"
        )
    try:
        layers = json.loads(manifest.read_text())["layers"]
        digest = next(x["digest"] for x in layers if x.get("mediaType") == MODEL_LAYER)
    except (ValueError, KeyError, TypeError, StopIteration):
        raise ModelError(
            f"teacher model {ref!r}: manifest {manifest} names no model layer "
            f"({MODEL_LAYER}); pull the tag again"
        ) from None
    blob = base / "blobs" / str(digest).replace(":", "-")
    if not blob.exists():
        raise ModelError(
            f"teacher model {ref!r}: its weights {blob} are missing from the Ollama store; "
            f"`ollama pull {ref.removeprefix(PREFIX)}` again"
        )
    return Resolved(blob, str(digest))
