"""A replica the kernel's out-of-memory killer ends, on a node with a real memory limit (a
cgroup): the job fails that work with one line that says it was memory and names the knobs
that lower it, where it used to say only "delivered 4 times"."""

from __future__ import annotations

import os

from distillq.core.control.status import failures
from distillq.core.job.jobs import load_job
from tests.conftest import run_cli
from tests.e2e.test_pipeline import enqueue
from tests.memory_cgroup import MemoryCgroup
from tests.progress import wait_for

LIMIT_MB = 2048


def test_a_replica_killed_by_the_oom_killer_fails_naming_the_memory_knobs(
    settings, workers, make_spec
):
    box = MemoryCgroup.make(f"distillq-oom-{os.getpid()}", LIMIT_MB)
    try:
        workers.start("teacher", "teacher")
        # Every delivery of the first replica takes twice the node's memory, as a batch too big
        # for the box would: the kernel kills the pool process each time.
        env = {"DISTILLQ_FAILPOINTS": f"replica:s:0:0=hog:{2 * LIMIT_MB}"}
        workers.start("student", "boxed", extra_env=env, preexec_fn=box.enter())
        job_id = enqueue(settings, make_spec())
        job = load_job(settings.storage, job_id)
        key = "replica-s-00000-0"
        wait_for(lambda: job.paths.failure(key).exists(), 300, "the replica's failure record")

        error = failures(job)[key].error
        assert "was delivered 4 times (limit 3)" in error
        assert "the out-of-memory killer ended it on boxed@test" in error, error
        assert f"of {LIMIT_MB / 1024:.2f} GiB" in error
        assert "lower students.0.batch_size" in error and "gradient_checkpointing" in error
        status = run_cli(settings, "status", job_id)
        assert status.returncode == 1 and "out-of-memory killer" in status.stdout
    finally:
        workers.stop_all()
        box.remove()
