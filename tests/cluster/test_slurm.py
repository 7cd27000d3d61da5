"""The cluster path on a real one-node SLURM cluster (scripts/cluster_up.sh; CI starts it, and so
does this module's fixture where it runs as root): a Hydra sweep through the submitit launcher
becomes one SLURM array whose jobs all land in one results folder, and a pipeline error inside a
job reaches the launching process (it used to exit 2 inside the job, where the launcher never
looked)."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster():
    def up() -> bool:
        return shutil.which("sinfo") is not None and subprocess.run(
            ["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=30).stdout.strip().startswith("up")

    if not up():
        if os.geteuid() != 0:
            pytest.fail("no SLURM cluster answers and this is not root: start one with sudo bash scripts/cluster_up.sh")
        subprocess.run(["bash", str(ROOT / "scripts" / "cluster_up.sh")], check=True, timeout=600)
    assert up()


def _sweep(tmp_path, *overrides):
    return subprocess.run([sys.executable, "-m", "pipeline", "-m", "hydra/launcher=slurm_cpu", "model=tiny_llama",
                           "debug=cpu", "stage.ma_profile.seq_len=32", f"run.results_dir={tmp_path / 'results'}",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_a_sweep_runs_as_one_slurm_array_into_one_results_folder(cluster, tmp_path):
    from pipeline.core.results import read_table

    r = _sweep(tmp_path, "run.seed=0,1")
    assert r.returncode == 0, r.stderr[-2000:]
    said = r.stdout + r.stderr  # the launching process reports the jobs while it waits
    assert "[slurm] submitted 2 jobs as " in said and "2 COMPLETED" in said, said[-2000:]
    rows = read_table(tmp_path / "results" / "massive_activations_default", "ma_layer_stats")
    assert sorted(rows["seed"].unique()) == [0, 1]
    job_ids = {p.name.split("_")[0] for p in (tmp_path / "sweep" / ".submitit").iterdir() if p.name[0].isdigit()}
    assert len(job_ids) == 1, job_ids  # one array
    job = job_ids.pop()
    for _ in range(120):  # the results came back; the jobs' own ends reach the accounting a moment later
        states = subprocess.run(["sacct", "-n", "-X", "-j", job, "-o", "State"], capture_output=True,
                                text=True, timeout=60).stdout.split()
        if not {"RUNNING", "PENDING", "COMPLETING"} & set(states):
            break
        time.sleep(0.5)
    assert states == ["COMPLETED", "COMPLETED"], states


def test_a_pipeline_error_inside_a_job_reaches_the_launcher(cluster, tmp_path):
    """The job raises the error itself, so the launcher re-raises it as it is: not an
    UncompletedJobError it can only build from the accounting (without which it waited forever)."""
    r = _sweep(tmp_path, "stage.ma_profile.fig1_layer=99")
    assert r.returncode != 0
    assert "PipelineError: stage.ma_profile.fig1_layer=99: layer 99 is out of range" in r.stderr, r.stderr[-2000:]
    assert "UncompletedJobError" not in r.stderr


def test_a_two_rank_ddp_job_trains_as_one_process_accumulating_its_micro_batches(cluster, tmp_path):
    """hydra/launcher=slurm_ddp on CPU (gloo): one SLURM job of 2 tasks = one DDP run; rank 0 alone
    writes, ranks above 0 leave no scratch folder, and the losses equal one process that
    accumulates the same two micro-batches."""
    import glob
    import tempfile

    from pipeline.core.results import read_table

    common = ["experiment=massive_activations_gpt2_default", "debug=cpu", "stage.train_lm.grad_accum=2"]
    own = [f"stage.train_lm.checkpoint_dir={tmp_path / d}" for d in ("ck_ddp", "ck_one")]  # never each other's
    before = set(glob.glob(f"{tempfile.gettempdir()}/pipeline-rank*"))
    ddp = subprocess.run([sys.executable, "-m", "pipeline", "-m", *common, own[0], "hydra/launcher=slurm_ddp",
                          "hydra.launcher.gpus_per_node=null", "hydra.launcher.tasks_per_node=2",
                          "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=4", "hydra.launcher.partition=null",
                          "hydra.launcher.timeout_min=20", f"run.results_dir={tmp_path / 'ddp'}",
                          f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    one = subprocess.run([sys.executable, "-m", "pipeline", *common, own[1], f"run.results_dir={tmp_path / 'one'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    assert "resuming" not in one.stdout + one.stderr  # trained here, not read back from the DDP run's checkpoint
    curves = [read_table(tmp_path / d / "massive_activations_gpt2", "train_curve") for d in ("ddp", "one")]
    assert len(curves[0]) == len(curves[1]) > 0
    assert curves[0]["loss"].dropna().tolist() == pytest.approx(curves[1]["loss"].dropna().tolist(),
                                                                        rel=1e-5)
    assert set(glob.glob(f"{tempfile.gettempdir()}/pipeline-rank*")) == before
