"""The SLURM launcher's progress lines (hydra_plugins/pipeline_launcher): job ids at submission, a
line per change of the states, the stderr file of a failed job; on fake jobs (the real cluster
path is tests/cluster)."""

from types import SimpleNamespace

from hydra_plugins.pipeline_launcher import watched

CLOCK = [0]  # polls so far: each sleep between polls moves the fake jobs on


class FakeJob:
    def __init__(self, job_id, states):
        self.job_id, self.states = job_id, states
        self.paths = SimpleNamespace(folder=f"/sweep/.submitit/{job_id}", stderr=f"/sweep/.submitit/{job_id}.err")

    @property
    def state(self):
        return self.states[min(CLOCK[0], len(self.states) - 1)]

    def done(self):
        return self.state in ("COMPLETED", "FAILED")


def test_watch_reports_ids_state_changes_and_the_failed_jobs_log(monkeypatch):
    monkeypatch.setattr(watched.time, "sleep", lambda _s: CLOCK.__setitem__(0, CLOCK[0] + 1))
    lines = []
    jobs = [FakeJob("7_0", ["UNKNOWN", "RUNNING", "RUNNING", "RUNNING", "COMPLETED"]),
            FakeJob("7_1", ["UNKNOWN", "RUNNING", "FAILED"])]
    watched.watch(jobs, say=lambda text, flush=True: lines.append(text))
    assert lines[0].startswith("[slurm] submitted 2 jobs as 7;")
    states = [line.split("s  ", 1)[1] for line in lines[1:] if " s  " in line]
    assert states == ["2 SUBMITTED", "2 RUNNING", "1 FAILED, 1 RUNNING", "1 COMPLETED, 1 FAILED"]
    assert sum("job 7_1 FAILED: /sweep/.submitit/7_1.err" in line for line in lines) == 1  # said once
