"""docs/API.md runs as written (its examples on the offline SmolLM2 and a tiny model), and a model
named only by its folder or its Hub id runs the default experiment with no YAML of the user's."""

import re
import shutil

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def test_the_api_docs_examples_run(tmp_path, monkeypatch, capsys):
    from pipeline import api

    run = api.run  # the example's results go to this test's folder, not the checkout's outputs/
    monkeypatch.setattr(api, "run", lambda exp, *o: run(exp, *o, f"run.results_dir={tmp_path}"))
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "API.md").read_text(), re.S)
    assert len(blocks) == 2
    for code in blocks:
        exec(compile(code, "docs/API.md", "exec"), {})
    said = capsys.readouterr().out
    assert "Lab(smollm2_135m: 30 layers on cpu)" in said and "super weight" in said
    loss = re.search(r"loss ([\d.]+) -> ([\d.]+) nats/token", said)
    assert loss and float(loss.group(2)) > float(loss.group(1))  # the massive activation matters
    assert "['ma_profile']" in said


def _tiny_checkpoint(folder):
    from tests.helpers import tiny

    model, tok = tiny()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def test_a_folder_and_a_hub_id_run_the_default_experiment_without_a_yaml(tmp_path, monkeypatch):
    from pipeline import api

    folder = tmp_path / "my-model"
    _tiny_checkpoint(folder)
    out = api.run("massive_activations_default", *api.model_overrides(str(folder)), "debug=cpu",
                  f"run.results_dir={tmp_path / 'r1'}")
    assert (tmp_path / "r1" / "massive_activations_default" / "runs").is_dir() and "ma_profile" in out
    assert list((tmp_path / "r1" / "massive_activations_default" / "runs").glob("my-model__*"))

    # a Hub id, served from a local Hugging Face cache laid out as the Hub client writes it
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-model" / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snapshot)
    (cache / "models--someone--tiny-model" / "refs").mkdir()
    (cache / "models--someone--tiny-model" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    assert api.model_overrides("someone/tiny-model") == ["model=hub", "model.hub_id=someone/tiny-model"]
    api.run("massive_activations_default", *api.model_overrides("someone/tiny-model"), "debug=cpu",
            f"run.results_dir={tmp_path / 'r2'}")
    assert list((tmp_path / "r2" / "massive_activations_default" / "runs").glob("someone--tiny-model__*"))
