"""`distillq init-student`: a smaller student of the teacher's architecture, with its tokenizer,
optionally started from the teacher's own layers (cut to the student's width)."""

from __future__ import annotations

import pytest
import torch

from distillq.app.demo_models import TEACHER_ASSET
from distillq.core.job.models import load_causal_lm, load_tokenizer, tokenizer_fingerprint
from distillq.core.student.init_student import init_student, layer_map, shape_for
from distillq.errors import ModelError


def test_layer_map_takes_every_other_layer_at_half_depth():
    assert layer_map(6, 3) == [0, 2, 4]
    assert layer_map(12, 4) == [0, 3, 6, 9]
    assert layer_map(4, 4) == [0, 1, 2, 3]


def test_a_student_from_the_teacher_layers_is_the_teacher_cut_down(tmp_path):
    teacher = str(TEACHER_ASSET)  # 6 layers, hidden 256, head size 32
    out, shape = init_student(teacher, tmp_path / "s", layers=3, hidden=128, from_teacher=True)
    assert (shape.layers, shape.hidden, shape.heads) == (3, 128, 4)
    s, t = load_causal_lm(str(out)), load_causal_lm(teacher)
    assert tokenizer_fingerprint(load_tokenizer(str(out))) == tokenizer_fingerprint(
        load_tokenizer(teacher)
    )
    sw, tw = s.state_dict(), t.state_dict()
    torch.testing.assert_close(
        sw["model.embed_tokens.weight"], tw["model.embed_tokens.weight"][:, :128]
    )
    # Student layer 1 starts from teacher layer 2, its leading heads and rows.
    torch.testing.assert_close(
        sw["model.layers.1.self_attn.q_proj.weight"],
        tw["model.layers.2.self_attn.q_proj.weight"][:128, :128],
    )
    torch.testing.assert_close(
        sw["model.layers.1.mlp.down_proj.weight"],
        tw["model.layers.2.mlp.down_proj.weight"][:128, : shape.intermediate],
    )
    ids = torch.tensor([load_tokenizer(teacher)("def main():")["input_ids"]])
    assert torch.isfinite(s(ids).logits).all()  # it runs in plain transformers


def test_random_init_and_refusals(tmp_path):
    teacher = str(TEACHER_ASSET)
    out, shape = init_student(teacher, tmp_path / "r", layers=None, hidden=None, from_teacher=False)
    assert shape.layers == 3 and shape.hidden == 256  # default: half the depth, same width
    s, t = load_causal_lm(str(out)), load_causal_lm(teacher)
    assert not torch.equal(
        s.state_dict()["model.layers.0.self_attn.q_proj.weight"],
        t.state_dict()["model.layers.0.self_attn.q_proj.weight"],
    )
    with pytest.raises(ModelError, match="not empty"):
        init_student(teacher, out, layers=2, hidden=None, from_teacher=False)
    cfg = load_causal_lm(teacher).config
    with pytest.raises(ModelError, match="multiple of the teacher's head size 32"):
        shape_for(cfg, None, 100)
    with pytest.raises(ModelError, match="choose 1 to 6"):
        shape_for(cfg, 9, None)


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_decoupled_heads_take_the_default_width(tmp_path, arch):
    """Heads x head size != width (Gemma 3: 4 x 256 at width 640): the default student and a
    narrower one are built, cut from the teacher, and run; per-layer attention kinds follow."""
    from tests.tiny_arch import save_tiny_arch

    teacher = str(save_tiny_arch(tmp_path / "t", arch, 0, True, hidden=48, layers=4))
    cfg = load_causal_lm(teacher).config
    assert cfg.num_attention_heads * cfg.head_dim != cfg.hidden_size
    out, shape = init_student(teacher, tmp_path / "d", layers=None, hidden=None, from_teacher=True)
    assert (shape.layers, shape.hidden, shape.heads, shape.kv_heads) == (2, 48, 4, 2)
    narrow, small = init_student(teacher, tmp_path / "n", layers=2, hidden=24, from_teacher=True)
    assert (small.hidden, small.heads, small.kv_heads, small.head_dim) == (24, 2, 1, 32)
    ids = torch.tensor([load_tokenizer(teacher)("def main():")["input_ids"]])
    for path in (out, narrow):
        s = load_causal_lm(str(path))
        assert s.config.layer_types == [cfg.layer_types[i] for i in layer_map(4, 2)]
        assert torch.isfinite(s(ids).logits).all()
    sw = load_causal_lm(str(narrow)).state_dict()
    tw = load_causal_lm(teacher).state_dict()
    torch.testing.assert_close(  # student layer 1 is teacher layer 2: its leading heads and rows
        sw["model.layers.1.self_attn.q_proj.weight"],
        tw["model.layers.2.self_attn.q_proj.weight"][:64, :24],
    )
