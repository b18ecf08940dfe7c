"""Which device each pool child of `distillq worker -c N --device ...` uses. A mapping from the
child's index to a device and an environment, so it is tested without a GPU (none here)."""

from __future__ import annotations

import pytest

from distillq.core.job.models import device
from distillq.errors import DistillqError
from distillq.workers.devices import assign, usable_gpus


def test_each_child_of_a_gpu_node_gets_its_own_gpu():
    gpus = usable_gpus(None, 4)
    got = [assign("auto", gpus, i) for i in range(4)]
    assert [a.env["CUDA_VISIBLE_DEVICES"] for a in got] == ["0", "1", "2", "3"]
    assert {a.device for a in got} == {"cuda"}
    # More children than GPUs: they share round-robin, never all on GPU 0.
    assert [assign("cuda", ["0", "1"], i).env["CUDA_VISIBLE_DEVICES"] for i in range(4)] == [
        "0", "1", "0", "1",
    ]  # fmt: skip


def test_the_operators_cuda_visible_devices_is_respected():
    gpus = usable_gpus("2, 3", 8)
    assert gpus == ["2", "3"]
    assert [assign("auto", gpus, i).env["CUDA_VISIBLE_DEVICES"] for i in range(3)] == [
        "2",
        "3",
        "2",
    ]


def test_cpu_mode_and_gpu_less_nodes_hide_cuda():
    for a in (assign("cpu", ["0", "1"], 1), assign("auto", [], 0)):
        assert a.device == "cpu"
        assert a.env == {"CUDA_VISIBLE_DEVICES": "", "DISTILLQ_DEVICE": "cpu"}


def test_cuda_on_a_node_without_gpus_is_one_clear_line():
    with pytest.raises(DistillqError, match="--device cuda, but this node has no usable GPU"):
        assign("cuda", usable_gpus(None, 0), 0)
    with pytest.raises(DistillqError, match="not one of auto, cpu, cuda"):
        assign("tpu", ["0"], 0)


def test_the_child_computes_where_it_was_assigned(monkeypatch):
    monkeypatch.setenv("DISTILLQ_DEVICE", "cpu")
    assert device() == "cpu"
    monkeypatch.delenv("DISTILLQ_DEVICE")
    assert device() in ("cpu", "cuda")
