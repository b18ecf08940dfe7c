"""What servers answer, read back into targets: vLLM's prompt_logprobs (by id), generated
tokens as ``token_id:N``, and the checks that refuse a server tokenizing differently.

vLLM does not install here (its PyPI wheels are CUDA builds; the CPU build compiles from
source and pins another transformers), so its answers are built here in the shape vLLM's
protocol defines (``CompletionResponseChoice.prompt_logprobs: list[dict[int, Logprob] |
None]``, element i predicting prompt token i), from the tiny teacher's own log-probs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillq.core.job.data import TokenizeStats, tokenize_record
from distillq.core.job.models import load_causal_lm, load_tokenizer
from distillq.core.targets.topk import TopK
from distillq.core.teacher import dialects
from distillq.core.teacher.dialects import TokenTable
from distillq.core.teacher.local import score_batch
from distillq.errors import EndpointError


@pytest.fixture(scope="module")
def teacher(tiny_models):
    ref = tiny_models["teacher"]
    return load_causal_lm(ref, "teacher"), load_tokenizer(ref)


def vllm_answer(model, ids: list[int], k: int) -> dict:
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    entries: list = [None]
    for i in range(1, len(ids)):
        dist = lp[i - 1]
        top = torch.topk(dist, k)
        entry = {
            str(int(t)): {"logprob": float(v), "rank": r + 1, "decoded_token": "x"}
            for r, (t, v) in enumerate(zip(top.indices, top.values, strict=True))
        }
        rank = int((dist > dist[ids[i]]).sum()) + 1
        entry[str(ids[i])] = {"logprob": float(dist[ids[i]]), "rank": rank, "decoded_token": "y"}
        entries.append(entry)
    return {"choices": [{"index": 0, "text": "", "prompt_logprobs": entries, "logprobs": None}]}


def test_vllm_prompt_logprobs_give_the_local_teachers_targets(teacher, text_records):
    model, tok = teacher
    s = tokenize_record(text_records[0], 0, tok, 64, TokenizeStats())
    body = dialects.score_body("vllm", "m", s.input_ids, "", 8)
    assert body["prompt"] == s.input_ids and body["prompt_logprobs"] == 8  # ids, not text
    ids, lps, al = dialects.parse_scores(
        "vllm", vllm_answer(model, s.input_ids, 8), s.input_ids, s.target_positions(), 8,
        TokenTable(tok), "vllm",
    )  # fmt: skip
    local = score_batch(model, [s], TopK(8), 1.0)[0]
    assert al.fallback_positions == 0 and al.obtained == 8 * len(s.target_positions())
    assert np.array_equal(ids, local.ids)
    assert np.allclose(lps, local.logprobs.astype(np.float32), atol=2e-3)


def test_a_server_that_tokenizes_differently_is_refused_by_record_and_position(
    teacher, text_records
):
    model, tok = teacher
    s = tokenize_record(text_records[1], 0, tok, 64, TokenizeStats())
    answer = vllm_answer(model, s.input_ids, 4)
    entry = answer["choices"][0]["prompt_logprobs"][5]
    answer["choices"][0]["prompt_logprobs"][5] = {
        str(int(t) + 1): v for t, v in entry.items() if int(t) != s.input_ids[5]
    }
    with pytest.raises(EndpointError, match=r"\(record 9\): token 5 came back"):
        dialects.parse_scores(
            "vllm", answer, s.input_ids, s.target_positions(), 4, TokenTable(tok),
            "http://gpu:8000/v1 (record 9)",
        )  # fmt: skip


def test_vllm_generated_tokens_come_back_by_id(teacher):
    _, tok = teacher
    answer = {
        "choices": [
            {
                "text": "ab",
                "finish_reason": "stop",
                "logprobs": {
                    "tokens": ["token_id:65", "token_id:66"],
                    "top_logprobs": [
                        {"token_id:65": -0.1, "token_id:7": -2.5},
                        {"token_id:66": -0.3},
                    ],
                },
            }
        ]
    }
    got = dialects.parse_generation("vllm", answer, tok, TokenTable(tok), 4, "vllm")
    assert got.ids == [65, 66] and got.stopped
    assert got.target_ids[0, :2].tolist() == [65, 7]
    assert np.isneginf(got.target_logprobs[1, 1:]).all()  # one entry obtained, rest unlisted


def test_text_only_generation_is_sequence_level_kd(teacher):
    """An Ollama-class answer: text only. Every target is the teacher's own token, one-hot."""
    _, tok = teacher
    answer = {"choices": [{"text": "def f(x):", "finish_reason": "length"}]}
    got = dialects.parse_generation("text", answer, tok, TokenTable(tok), 4, "ollama")
    assert got.ids == tok("def f(x):", add_special_tokens=False)["input_ids"]
    assert got.alignment.fallback_positions == len(got.ids)
    assert (got.target_ids[:, 0] == np.asarray(got.ids)).all()
    assert (got.target_logprobs[:, 0] == 0).all()
