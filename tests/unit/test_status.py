"""Terminal progress: bars, throughput, ETA."""


def test_status_bars_show_throughput_and_eta():
    from app.status import render

    st = {
        "job_id": "j",
        "state": "running",
        "created_at": 1000.0,
        "at": 1060.0,
        "failures": {},
        "shards": [
            {"state": "done"},
            {"state": "running", "progress": {"samples": 5, "of": 10, "tokens_per_s": 900.0}},
            {"state": "pending"},
        ],
        "tracks": {
            "s": {
                "rounds_merged": 1,
                "rounds": 3,
                "replicas": 1,
                "running": {"r": {"step": 5, "steps": 10, "loss": 2.5, "tokens_per_s": 1200.0}},
            }
        },
    }
    text = render(st)
    # 1.5 of 3 shards in 60 s: 60 s left; 1.5 of 3 rounds likewise.
    assert "900 tok/s  ETA 1:00" in text and "loss 2.500  1200 tok/s  ETA 1:00" in text
