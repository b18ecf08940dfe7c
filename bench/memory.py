"""Peak RSS of the teacher and student stage functions on 1× and 10× the data.

Each measurement runs in a fresh child process and reads its VmHWM (peak resident set) from
/proc: ``ru_maxrss`` would not do, Linux keeps it across exec, so a child forked from this
(large) process would report the parent's peak. One-shard jobs, through the same functions
the workers run (app.stages, app.student).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bench.efficiency import spec

CHILD = """
import json, sys, torch
torch.set_num_threads(1)
from pathlib import Path
from distillq.core.create import create_job
from distillq.core.job.jobs import load_job
from distillq.core.job.load import load_spec
storage, spec_path, stage = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if stage == "teacher":
    from distillq.core import stages
    job = create_job(storage, load_spec(spec_path), job_id=sys.argv[4])
    stages.teacher_shard(job, 0)
else:
    from distillq.core.student import train as student
    job = load_job(storage, sys.argv[4])
    student.train_replica(job, "s", 0, 0)
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"max_rss_mb": int(hwm.split()[1]) / 1024}))
"""


def measure(root: Path, base_records: int = 100) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scale in (1, 10):
        records = base_records * scale
        s = spec(root, records, shards=1, name=f"mem{scale}")
        s["eval_fraction"] = 0.0
        path = root / f"mem{scale}.yaml"
        path.write_text(yaml.safe_dump(s))
        row = {"records": records}
        for stage in ("teacher", "student"):
            res = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    str(root / "mem-storage"),
                    str(path),
                    stage,
                    f"mem{scale}",
                ],
                capture_output=True,
                text=True,
                timeout=1800,
                check=True,
            )
            row[f"{stage}_max_rss_mb"] = round(
                json.loads(res.stdout.strip().splitlines()[-1])["max_rss_mb"], 1
            )
        out[f"{scale}x"] = row
    for stage in ("teacher", "student"):
        out[f"{stage}_growth_10x"] = round(
            out["10x"][f"{stage}_max_rss_mb"] / out["1x"][f"{stage}_max_rss_mb"], 3
        )
    return out
