"""The real entry point (`python -m pipeline`) on tiny models: single runs and multiruns."""

import pandas as pd
import pytest

from tests.unit.test_config import ROOT, _cli

pytestmark = pytest.mark.slow


def test_cli_run_writes_csvs_manifest_and_summary(tmp_path):
    dated = set(ROOT.glob("outputs/20*/*"))
    r = _cli("model=tiny_llama", "debug=cpu", f"run.results_dir={tmp_path}", "run.figures=true", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # issue 26: every command left an outputs/<date>/<time>/.hydra folder; the manifest holds the config
    assert set(ROOT.glob("outputs/20*/*")) == dated and not (ROOT / ".hydra").exists()
    out = tmp_path / "massive_activations_default"
    for table in ("ma_layer_stats", "ma_fig1"):
        assert (out / f"{table}.csv").exists()
    import json

    manifest = json.loads(next((out / "runs").glob("tiny_llama__*/manifest.json")).read_text())
    assert manifest["cpu_s"] > 0 and manifest["wall_s"] > 0 and manifest["threads"] >= 1  # what the run cost
    assert {"cores", "load_start", "load_end"} <= set(manifest)
    assert list((out / "figures").glob("fig3_layers_tiny_llama_*.png"))
    assert "massive activations" in r.stdout and str(out) in r.stdout


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_multirun_over_models_lands_in_one_table(tmp_path, launcher):
    args = ["-m", "model=tiny_llama,tiny_gpt2", "debug=cpu", f"run.results_dir={tmp_path}",
            f"hydra.sweep.dir={tmp_path}/sweep"]
    if launcher == "joblib":
        args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    r = _cli(*args, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_csv(tmp_path / "massive_activations_default" / "ma_layer_stats.csv")
    assert sorted(df["model"].unique()) == ["tiny_gpt2", "tiny_llama"]
    assert len(df) == 8  # 4 layers x 2 models, no duplicates
    import json

    shards = (tmp_path / "massive_activations_default").glob("runs/*/manifest.json")
    for m in (json.loads(p.read_text()) for p in shards):
        # each job's own CPU time: no more than its wall time on every core (the process-wide counter,
        # read whole, gave every job the CPU of the imports and of the jobs before it)
        assert 0 < m["cpu_s"] <= m["wall_s"] * m["cores"] + 0.5, (m["cpu_s"], m["wall_s"])


@pytest.mark.parametrize("script", ["bench_profile.py", "bench_eval.py"])
def test_benchmark_scripts_run_on_a_tiny_model(tmp_path, script):
    import subprocess
    import sys

    from tests.unit.test_config import ROOT

    r = subprocess.run([sys.executable, f"scripts/{script}", "--model", "tiny_llama", "--seq-len", "32",
                        "--batch", "1", "--repeats", "1", "--results", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    table = pd.read_csv(next((tmp_path / "bench").glob("*.csv")))
    assert table.loc[table.method == "bare", "ratio_to_bare"].item() == 1.0
    assert (table["ratio_to_bare"] > 0).all() and (table["device"] == "cpu").all()


def test_kernel_benchmark_runs_small(tmp_path):
    import subprocess
    import sys

    from tests.unit.test_config import ROOT

    r = subprocess.run([sys.executable, "scripts/bench_kernels.py", "--shrink", "64", "--repeats", "1",
                        "--blocks", "64", "--results", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    table = pd.read_csv(tmp_path / "bench" / "kernels.csv")
    assert set(table["impl"]) == {"copy", "reference"} and (table["device"] == "cpu").all()
    assert set(table["op"]) == {"block_quant_int4", "tensor_quant_int8", "token_quant_int8", "token_quant_int8_outlier"}
    assert (table.loc[table.impl == "copy", "fraction_of_copy"] == 1.0).all() and (table["gbytes_per_s"] > 0).all()


def test_manifest_records_the_resolved_secondary_datasets(tmp_path):
    """An override of a secondary dataset reaches the stage and the manifest records it resolved."""
    import json

    r = _cli("experiment=super_weight_tab3", "model=tiny_llama", "debug=cpu", f"run.results_dir={tmp_path}",
             "run.figures=false", "stage.sw_actquant.conditions=[fp]", "stage.sw_actquant.ppl_data=[wiki_summaries]",
             "catalog.data.wiki_summaries.bos=first", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads(next((tmp_path / "super_weight_tab3" / "runs").glob("*/manifest.json")).read_text())
    assert manifest["catalog_used"]["data"]["wiki_summaries"]["bos"] == "first"
    assert "catalog" not in manifest["config"]


def test_multirun_over_a_stage_argument_keeps_both_jobs_rows(tmp_path):
    """Defect: the row identity omitted stage arguments, so the second seq_len job deleted the
    first one's rows. Each job is its own setting now."""
    from pipeline.core.results import read_table

    r = _cli("-m", "model=tiny_llama", "debug=cpu", f"run.results_dir={tmp_path}", "run.figures=false",
             "stage.ma_profile.seq_len=16,32", f"hydra.sweep.dir={tmp_path}/sweep", timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    df = read_table(tmp_path / "massive_activations_default", "ma_layer_stats")
    assert df["setting"].nunique() == 2 and len(df) == 8  # 4 layers x 2 jobs
    view = pd.read_csv(tmp_path / "massive_activations_default" / "ma_layer_stats.csv")
    assert len(view) == 8


def test_a_secret_override_is_not_written_by_hydra(tmp_path):
    """Defect: secrets passed as overrides were written in clear to .hydra/{config,overrides}.yaml."""
    secret = "hf_" + "x" * 30
    r = _cli("model=tiny_llama", "debug=cpu", f"run.results_dir={tmp_path}/res", f"+model.hf_token={secret}",
             f"hydra.run.dir={tmp_path}/hydra", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and not [p for p in written if secret in p.read_text(errors="ignore")]
    assert secret not in r.stdout + r.stderr
    r = _cli("-m", "model=tiny_llama", "debug=cpu", f"+model.hf_token={secret}", timeout=120)
    assert r.returncode == 2 and "environment variables" in r.stderr


def test_sigterm_stops_a_run_in_one_line_and_a_rerun_resumes(tmp_path):
    """SIGTERM (what SLURM sends before killing a job) had no handler: exit -15, silent. It is
    handled like Ctrl-C now: one line, nothing half-written, and the same command resumes."""
    import signal
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "pipeline", "experiment=super_weight_tab3", "model=tiny_llama", "debug=cpu",
           "stage.sw_actquant.conditions=[fp,naive]", f"run.results_dir={tmp_path / 'r'}",
           f"hydra.run.dir={tmp_path / 'h'}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # stop it once its first condition is written, in the second
        if "condition naive" in line:
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143 and "terminated (SIGTERM): nothing half-written" in err and "Traceback" not in err
    assert not list((tmp_path / "r").glob("*/runs/[!.]*"))  # nothing committed
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-1500:]
    assert "condition fp: recorded by the interrupted run of this setting, kept" in again.stdout
