"""The student's head + loss in chunks of positions (core/head_loss.py) equals the one-pass
path: the same loss and the same gradients, for adapters inside the body, prompt tuning's
virtual tokens, full fine-tuning with a tied head and with an untied one, and the eval."""

from __future__ import annotations

import pytest
import torch

from distillq.core.job.data import TokenizeStats, padded, tokenize_record
from distillq.core.job.models import on_device
from distillq.core.job.spec import PeftSpec, StudentSpec
from distillq.core.maths import head_loss
from distillq.core.maths.losses import kd_loss
from distillq.core.student import train as student
from tests.tiny_arch import save_tiny_arch


@pytest.fixture(scope="module")
def untied(tmp_path_factory) -> str:
    return str(
        save_tiny_arch(tmp_path_factory.mktemp("untied") / "m", "qwen2", 5, tied=False, half=False)
    )


def batch(tok, text_records):
    samples = [
        tokenize_record(r, i, tok, 48, TokenizeStats()) for i, r in enumerate(text_records[:4])
    ]
    ids, mask, rows, cols, labels = on_device(padded([s for s in samples if s]), "cpu")
    torch.manual_seed(0)
    p = len(labels)
    t_ids = torch.randint(0, 4096, (p, 8))
    t_ids[:, 0] = labels  # the true token among the teacher's, as a real teacher has it
    t_lps = torch.log_softmax(torch.randn(p, 8) * 3, -1) - 0.3  # Σp < 1: a tail
    return ids, mask, rows, cols, labels, t_ids, t_lps


@pytest.mark.parametrize(
    ("method", "which"),
    [("lora", "tied"), ("prompt", "tied"), ("ia3", "tied"), ("full", "tied"), ("full", "untied")],
)
def test_chunked_head_loss_equals_one_pass(method, which, tiny_models, untied, text_records):
    path = tiny_models["student"] if which == "tied" else untied
    peft = {"method": method, **({"num_virtual_tokens": 4} if method == "prompt" else {})}
    model = student.build(StudentSpec(name="s", model=path, peft=PeftSpec(**peft)))
    from distillq.core.job.models import load_tokenizer

    ids, mask, rows, cols, labels, t_ids, t_lps = batch(load_tokenizer(path), text_records)
    opts = dict(alpha=0.3, temperature=2.0, kind="forward_kl")
    params = student.trainable(model)

    logits = student.target_logits(model, ids, mask, rows, cols)
    ref, ref_parts = kd_loss(logits, labels, t_ids, t_lps, **opts)
    ref_grads = torch.autograd.grad(ref, list(params.values()))

    hidden, head = head_loss.target_hidden(model, ids, mask, rows, cols)
    vocab = head.weight.shape[0]
    small = 5 * vocab * 16  # 5 positions per chunk
    assert head_loss.chunk_rows(vocab, small) == 5 and len(labels) > 20
    got, parts = head_loss.chunked_loss(hidden, head, labels, t_ids, t_lps, budget=small, **opts)
    grads = torch.autograd.grad(got, list(params.values()))

    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    assert parts["ce"] == pytest.approx(ref_parts["ce"], rel=1e-5)
    assert parts["kd"] == pytest.approx(ref_parts["kd"], rel=1e-5)
    for name, a, b in zip(params, grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    # The swap is undone: the model computes logits again.
    assert model(input_ids=ids[:1]).logits.shape[-1] == vocab


def test_eval_loss_through_chunks_equals_cross_entropy(tiny_models, text_records):
    from distillq.core.job.models import load_tokenizer
    from distillq.core.student.evaluate import eval_loss

    path = tiny_models["student"]
    model = student.build(StudentSpec(name="s", model=path, peft=PeftSpec(method="lora")))
    tok = load_tokenizer(path)
    samples = [
        tokenize_record(r, i, tok, 48, TokenizeStats()) for i, r in enumerate(text_records[:6])
    ]
    samples = [s for s in samples if s]
    ids, mask, rows, cols, labels = on_device(padded(samples), "cpu")
    with torch.no_grad():
        logits = student.target_logits(model, ids, mask, rows, cols)
        want = torch.nn.functional.cross_entropy(logits.float(), labels).item()
    assert eval_loss(model, samples, batch_size=len(samples)).loss == pytest.approx(want, rel=1e-5)
