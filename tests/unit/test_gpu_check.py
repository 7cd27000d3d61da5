"""``make gpu-check`` is prepared for a short GPU loan; its CPU dry run (toy sizes, a temporary
folder) runs every part here, so that the script cannot rot between loans."""

import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def test_the_gpu_check_dry_run_passes_every_part_on_the_cpu():
    r = subprocess.run([sys.executable, "scripts/gpu_check.py", "--dry-run"], cwd=ROOT, capture_output=True,
                       text=True, timeout=1200)
    table = r.stdout[r.stdout.rindex("part "):]
    assert r.returncode == 0, table
    for part in ("kernels", "bench_kernels", "bench_profile", "bench_eval", "bench_train", "gpt2_gpu", "birth_full"):
        assert f"\n{part} " in table and " ok " in table.split(f"\n{part} ")[1].splitlines()[0], table


def test_without_a_gpu_the_real_check_refuses_in_one_line(monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(gpu_check, "device_name", lambda: "cpu")
    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "no CUDA device here" in err
