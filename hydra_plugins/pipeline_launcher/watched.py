"""The SLURM launcher of ``hydra/launcher=slurm`` (and ``slurm_cpu``, ``slurm_ddp``): the
hydra-submitit-launcher's, plus what its launching process never said while it waited: the job
ids it submitted, then a line whenever the jobs' states change (with the time since submission),
and for a failed job where its log is. The jobs, their results and their errors are submitit's.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from unittest import mock

from hydra_plugins.hydra_submitit_launcher import submitit_launcher

POLL_S = 5.0  # how often the states are read (submitit caches sacct answers between polls)


ENDED = ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED")


def state(job, finished: bool) -> str:
    """The job's SLURM state; once every job is done, its end even where the accounting lags (a
    job whose result is written may still read RUNNING for a poll or two)."""
    now = job.state.replace("UNKNOWN", "SUBMITTED")  # submitted, not yet in squeue
    if finished and not now.startswith(ENDED):
        try:
            return "COMPLETED" if job.exception() is None else "FAILED"
        except Exception:  # noqa: BLE001 - no result at all: it did not complete
            return "FAILED"
    return now


def watch(jobs: Sequence, poll_s: float = POLL_S, say=print) -> None:
    """Print the jobs' ids, then a line each time the count of jobs per state changes, until every
    job has ended; a failed job's stderr file is named."""
    t0 = time.monotonic()
    ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
    say(f"[slurm] submitted {len(jobs)} job{'s' * (len(jobs) > 1)} as {', '.join(ids)}; waiting "
        f"(squeue -j {ids[0]}; logs in {jobs[0].paths.folder})", flush=True)
    last, told = None, set()
    while True:
        finished = all(j.done() for j in jobs)  # before the states: the last line shows the ends
        states = {j.job_id: state(j, finished) for j in jobs}
        counts = ", ".join(f"{n} {s}" for s, n in sorted(Counter(states.values()).items()))
        if counts != last:
            say(f"[slurm] {time.monotonic() - t0:6.0f} s  {counts}", flush=True)
            last = counts
        for j in jobs:
            if j.job_id not in told and states[j.job_id].startswith(ENDED[1:]):
                say(f"[slurm] job {j.job_id} {states[j.job_id]}: {j.paths.stderr}", flush=True)
                told.add(j.job_id)
        if finished:
            return
        time.sleep(poll_s)


class WatchedSlurmLauncher(submitit_launcher.SlurmLauncher):
    """hydra-submitit-launcher's SlurmLauncher; between submitting and collecting the results it
    reports the jobs (:func:`watch`)."""

    def launch(self, job_overrides, initial_job_idx):
        import submitit

        submit = submitit.AutoExecutor.map_array

        def submit_and_watch(executor, fn, *iterables):
            jobs = submit(executor, fn, *iterables)
            watch(jobs)
            return jobs

        with mock.patch.object(submitit.AutoExecutor, "map_array", submit_and_watch):
            return super().launch(job_overrides, initial_job_idx)
