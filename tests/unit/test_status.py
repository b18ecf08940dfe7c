"""Terminal progress: bars, throughput, ETA, and the loss label."""

from distillq.app.view import render
from distillq.core.control.status import JobStatus, ShardState, TrackState
from distillq.storage.records import Progress


def test_status_bars_show_throughput_and_eta():
    st = JobStatus(
        job_id="j",
        state="running",
        mode="teacher_student",
        created_at=1000.0,
        at=1060.0,
        shards=[
            ShardState(0, "done"),
            ShardState(
                1,
                "running",
                progress=Progress(
                    task="teacher-00001", at=1059.0, tokens_per_s=900.0, samples=5, of=10
                ),
            ),
            ShardState(2, "pending"),
        ],
        tracks={
            "s": TrackState(
                rounds_merged=1,
                rounds=3,
                merged_shards=[0],
                replicas=1,
                running={
                    "r": Progress(
                        task="r",
                        at=1059.0,
                        tokens_per_s=1200.0,
                        step=5,
                        steps=10,
                        loss=2.5,
                        ce=3.0,
                        kd=2.444,
                        node="cpu-box-1",
                    )
                },
            )
        },
    )
    text = render(st)
    # 1.5 of 3 shards in 60 s: 60 s left; 1.5 of 3 rounds likewise.
    assert "900 tok/s  ETA 1:00" in text
    assert (
        "mixed loss α·CE+(1−α)·KD 2.500 (CE 3.000, KD 2.444)  1200 tok/s  on cpu-box-1  ETA 1:00"
        in text
    )
