"""On-policy rounds in one process: the student samples the round's prompts, the teacher
scores the student's tokens, the replicas learn on them; each phase's file is a verified cache
file, written again the same way, and a round mixes cache and own batches by ``fraction``."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from distillq.app import view
from distillq.core import onpolicy
from distillq.core.control.status import job_status
from distillq.core.job.spec import LossSpec, OnPolicySpec
from distillq.core.student import merge, sample
from distillq.core.student import train as student
from distillq.core.targets.shard import Shard
from distillq.core.teacher.make import local_model
from distillq.storage import cache, checkpoints, records
from distillq.storage.layout import sidecar
from distillq.storage.records import RoundMarker
from tests.conftest import job_with_cache

K = 8


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_models, text_records):
    spec = {
        "name": "onpolicy",
        "shards": 2,
        "eval_fraction": 0.0,
        "students": [
            {
                "name": "s",
                "model": tiny_models["student"],
                "peft": {"method": "lora", "r": 4},
                "batch_size": 4,
                "lr": 5e-3,
                "replicas": 2,
                "on_policy": {"fraction": 0.5, "max_new_tokens": 12, "seed": 3},
            }
        ],
        "mode": "hybrid",
        "teacher": {"model": tiny_models["teacher"], "top_k": K, "max_length": 64},
    }
    return job_with_cache(tmp_path_factory.mktemp("onpolicy"), text_records[:40], spec)


def test_an_on_policy_track_learns_its_own_samples_with_reverse_kl_and_the_cache_as_set(job):
    spec = job.spec.student("s")
    assert job.spec.loss_for(spec).kind == "forward_kl"  # the job's, on cache batches
    own = job.spec.on_policy_loss(spec)
    assert (own.kind, own.alpha) == ("reverse_kl", 0.0)
    jsd = dataclasses.replace(spec, loss=LossSpec(kind="jsd", alpha=0.3))
    assert (job.spec.on_policy_loss(jsd).kind, job.spec.loss_for(jsd).kind) == ("jsd", "jsd")


def test_the_fraction_picks_records_per_round_and_record():
    spec = OnPolicySpec(fraction=0.5, seed=1)
    rids = np.arange(400)
    pick = sample.chosen(spec, 0, rids)
    assert 150 < pick.sum() < 250
    assert (sample.chosen(spec, 0, rids[::-1]) == pick[::-1]).all()  # per record, not order
    assert (sample.chosen(spec, 1, rids) != pick).any()  # another round, other records
    assert sample.chosen(OnPolicySpec(fraction=1.0), 0, rids).all()


def test_prompts_end_before_the_first_target():
    assert sample.prompt_of([5, 6, 7, 8, 9], [2, 3]) == [5, 6, 7]
    assert sample.prompt_of([5, 6, 7, 8, 9, 10], [0, 1, 2, 3, 4]) == [5, 6, 7]  # plain text


def test_sample_score_train_merge_a_round(job):
    track, round_ = "s", 0
    for part in range(2):
        made = onpolicy.sample_part(job, track, round_, part)
        path = job.paths.onpolicy_samples(track, round_, part)
        assert cache.verified(path, sidecar(path)) == made
        want = len(onpolicy.prompts(job, track, round_, part))
        assert made.samples == want > 0
        # A redelivered task finds its file; a lost file is written again, the same.
        first = path.read_bytes()
        assert onpolicy.sample_part(job, track, round_, part) == made
        sidecar(path).unlink()
        path.unlink()
        onpolicy.sample_part(job, track, round_, part)
        with cache.CacheReader(path) as a:
            ids = [a.sample_ids(j).tolist() for j in range(len(a))]
            texts = [a.generated(j)[1] for j in range(len(a))]
        assert len(first) > 0 and all(len(t) > 0 for t in texts)
        assert ids == [s.input_ids for s in onpolicy.read_samples(path)[0]]

        scored = onpolicy.score_part(job, track, round_, part)
        assert scored is not None and scored.k == K + 1
        out = job.paths.onpolicy_scored(track, round_, part)
        # The teacher's log-prob of each token the student wrote is listed at its position,
        # and is the teacher's own (a dense forward over the sample).
        model, _ = local_model(job.spec.teacher)
        with Shard(out) as r:
            assert len(r) == made.samples
            j = 0
            b = r.batch_of(np.asarray([j]))
            ids_j = r.sample_ids(j)
            pos = r.positions_of(j)
            tokens = ids_j[pos + 1]
            assert b.target_ids is not None and b.target_logprobs is not None
            listed = b.target_ids == tokens[:, None]
            assert listed.any(-1).all()
            got = np.where(listed, b.target_logprobs, -np.inf).max(-1)
            with torch.no_grad():
                logits = model(torch.as_tensor(ids_j[None], dtype=torch.long)).logits[0]
            dense = torch.log_softmax(logits.float(), -1)[pos, tokens].numpy()
            np.testing.assert_allclose(got, dense, atol=2e-2)  # float16 in the cache

    # `watch` shows where the round in flight stands, phase by phase, from storage.
    records.write(job.paths.round_inflight(track), RoundMarker(shard=round_, queued_at=0.0))
    st = job_status(job)
    assert st.tracks[track].phase == "round 0: sampled 2/2, scored 2/2, trained 0/2"
    assert "[round 0: sampled 2/2, scored 2/2, trained 0/2]" in view.render(st)

    # Each replica trains on its cache records the fraction did not pick, and on its samples.
    stats = [student.train_replica(job, track, round_, r) for r in range(2)]
    with Shard(job.paths.shard(0)) as r:
        n_cache = len(r)
    own = sum(onpolicy.score_part(job, track, round_, r).samples for r in range(2))
    picked = sum(len(onpolicy.prompts(job, track, round_, p)) for p in range(2))
    assert own == picked and 0 < picked < n_cache
    assert sum(s.steps for s in stats) > 0
    result = merge.merge_round(job, track, round_)
    assert result.version == 1
    assert checkpoints.latest(job.paths, track).version == 1
    assert job_status(job).tracks[track].phase == ""  # merged: no round in flight


def _raw(tiny_models, **student_over) -> dict:
    return {
        "name": "p",
        "dataset": "d.jsonl",
        "teacher": {"model": tiny_models["teacher"]},
        "students": [
            {"name": "s", "model": tiny_models["student"], "on_policy": {}, **student_over}
        ],
    }


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"students.0.on_policy": {"fraction": 0.0}}, "on_policy.fraction=0.0 must lie in (0, 1]"),
        ({"students.0.on_policy": {"top_p": 0.0}}, "on_policy.top_p=0.0"),
        ({"students.0.on_policy": {"typo": 1}}, "typo"),
        ({"teacher": None, "mode": "data_parallel"}, "on_policy needs a teacher"),
        (
            {"students.0.on_policy": {"estimator": "token"}, "students.0.loss": {"kind": "jsd"}},
            "estimator: token estimates reverse KL, and this track's loss.kind is jsd",
        ),
        (
            {"teacher": {"model": "t", "target_method": "sampled"}},
            "set teacher.target_method: topk",
        ),
    ],
)
def test_bad_on_policy_specs_are_one_line_naming_the_key(tiny_models, change, says):
    from distillq.core.job.load import spec_from_dict
    from distillq.errors import DistillqError

    raw = _raw(tiny_models)
    for key, value in change.items():
        if key.startswith("students.0."):
            raw["students"][0][key.rsplit(".", 1)[1]] = value
        elif value is None:
            raw.pop(key)
        else:
            raw[key] = value
    with pytest.raises(DistillqError) as e:
        spec_from_dict(raw)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_an_on_policy_student_of_another_tokenizer_is_refused_at_enqueue(
    tiny_models, phi3_student, text_records, tmp_path
):
    from distillq.core.create import create_job
    from distillq.core.job.load import spec_from_dict
    from distillq.errors import DistillqError
    from tests.conftest import write_jsonl

    raw = _raw(tiny_models)
    raw["dataset"] = str(write_jsonl(tmp_path / "d.jsonl", text_records[:20]))
    raw["students"][0]["model"] = phi3_student
    with pytest.raises(DistillqError, match="on-policy distillation needs the teacher to score"):
        create_job(tmp_path / "storage", spec_from_dict(raw))
    assert not list((tmp_path / "storage").glob("jobs/*/job.yaml"))  # nothing left behind


def test_the_on_policy_loss_on_tiny_models_is_a_bound_that_meets_the_dense_reverse_kl(job):
    """On a student's own samples, with the real tiny teacher and student: the reverse KL over
    the teacher's top-k, the sampled token and the tail never exceeds the dense one, and equals
    it when the teacher lists the whole vocabulary."""
    from distillq.core.maths.losses import kd_loss
    from distillq.core.targets.topk import TopK
    from distillq.core.teacher.local import score_batch

    path = job.paths.onpolicy_samples("s", 0, 0)
    if not path.exists():
        onpolicy.sample_part(job, "s", 0, 0)
    teacher, tok = local_model(job.spec.teacher)
    model = student.build(job.spec.student("s")).eval()
    samples = onpolicy.read_samples(path)[0][:3]
    for k in (4, len(tok)):
        scored = score_batch(teacher, samples, TopK(k), 1.0, limit=len(tok), token_column=True)
        for s, t in zip(samples, scored, strict=True):
            pos = torch.as_tensor(s.target_positions())
            ids = torch.as_tensor([s.input_ids])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, pos].float()
                dense_t = torch.log_softmax(teacher(input_ids=ids).logits[0, pos].float(), -1)
                _, terms = kd_loss(
                    logits,
                    ids[0, pos + 1],
                    torch.as_tensor(t.ids),
                    torch.as_tensor(t.logprobs.astype(np.float32)),
                    alpha=0.0,
                    temperature=1.0,
                    kind="reverse_kl",
                )
            logs = torch.log_softmax(logits, -1)
            dense = float((logs.exp() * (logs - dense_t)).sum(-1).mean())
            if k == len(tok):
                assert terms["kd"] == pytest.approx(dense, abs=2e-3)  # float16 targets
            else:
                assert terms["kd"] <= dense + 1e-4
                assert terms["kd"] > 0


def test_a_replica_learns_its_own_samples_with_the_sampled_token_estimator(job):
    """``on_policy.estimator: token``: the replica's own batches take the reverse KL estimated
    at each sampled token, read from the scored file's last column."""
    spec = job.spec.student("s")
    assert spec.on_policy is not None
    token = dataclasses.replace(
        spec, on_policy=dataclasses.replace(spec.on_policy, estimator="token")
    )
    tjob = dataclasses.replace(job, spec=dataclasses.replace(job.spec, students=(token,)))
    round_ = 1
    for part in range(2):
        onpolicy.sample_part(tjob, "s", round_, part)
        assert onpolicy.score_part(tjob, "s", round_, part) is not None
    before = checkpoints.latest(job.paths, "s")
    stats = student.train_replica(tjob, "s", round_, 0)
    assert stats.steps > 0 and all(np.isfinite(c[1]) for c in stats.curve)
    delta, _ = checkpoints.load_replica(job.paths, "s", round_, 0)  # it moved its parameters
    assert any(float(v.abs().max()) > 0 for v in delta.values())
    # The same replica with the listed-ids divergence moves them otherwise: the estimator is
    # what its own batches were trained with.
    shutil.rmtree(job.paths.replica_dir("s", round_, 0))
    student.train_replica(job, "s", round_, 0)
    listed, _ = checkpoints.load_replica(job.paths, "s", round_, 0)
    assert any(not torch.allclose(delta[k], listed[k]) for k in delta)
    assert before is None or before.version == checkpoints.latest(job.paths, "s").version


def test_chunks_split_each_replicas_prompts_into_parts_it_trains_on_together(job):
    """``on_policy.chunks: 2`` with 2 replicas: 4 parts; parts 0 and 1 are replica 0's
    prompts in order, 2 and 3 replica 1's, and each replica trains on both of its parts."""
    spec = job.spec.student("s")
    assert spec.on_policy is not None
    two = dataclasses.replace(spec, on_policy=dataclasses.replace(spec.on_policy, chunks=2))
    cjob = dataclasses.replace(job, spec=dataclasses.replace(job.spec, students=(two,)))
    assert two.parts == 4 and list(two.parts_of(1)) == [2, 3]

    def ids(j, part):
        return [p.record_id for p in onpolicy.prompts(j, "s", 0, part)]

    for replica in range(2):
        whole = ids(job, replica)
        pieces = [ids(cjob, p) for p in two.parts_of(replica)]
        assert [i for piece in pieces for i in piece] == whole and all(pieces)
    round_ = 2  # a round no other test samples
    for part in range(4):
        onpolicy.sample_part(cjob, "s", round_, part)
        onpolicy.score_part(cjob, "s", round_, part)
    stats = student.train_replica(cjob, "s", round_, 1)
    own = sum(
        cache.read_stats(sidecar(job.paths.onpolicy_scored("s", round_, p))).target_positions
        for p in (2, 3)
    )
    with Shard(job.paths.shard(job.cache_shard(round_))) as r:
        mine = student.replica_samples(len(r), 2, 1)
        pick = sample.chosen(two.on_policy, round_, r.record_ids()[np.asarray(mine)])
        cached = sum(len(r.positions_of(int(j))) for j, p in zip(mine, pick, strict=True) if not p)
    assert stats.target_positions == two.epochs * (own + cached)
