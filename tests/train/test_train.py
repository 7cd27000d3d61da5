"""The training loop on a tiny model, CPU: schedule, exact resume after SIGKILL, NaN stop with
the last good checkpoint kept, freeze_until, checkpoints that load as models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipeline.config.training import BirthTrainArgs, TrainConfig, TrainLmArgs
from pipeline.core.errors import PipelineError
from pipeline.train.loop import frozen_at, lr_at
from tests.helpers import ROOT, tiny_training


def test_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=4, decay_steps=14)
    lrs = [lr_at(s, cfg) for s in range(16)]
    assert lrs[:4] == sorted(lrs[:4]) and lrs[3] < 1.0 and lrs[4] == pytest.approx(1.0)
    assert lrs[4:15] == sorted(lrs[4:15], reverse=True) and lrs[14] == lrs[15] == 0.1
    # null decay_steps: over all steps; null min_lr: a constant rate (paper C's stage)
    assert [lr_at(s, TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=4, steps=14)) for s in range(16)] == lrs
    assert {lr_at(s, TrainConfig(lr=0.03, min_lr=None, warmup_steps=0, steps=5)) for s in range(6)} == {0.03}


def test_the_training_stages_arguments_are_a_train_config():
    assert issubclass(TrainLmArgs, TrainConfig) and issubclass(BirthTrainArgs, TrainConfig)
    birth = BirthTrainArgs()
    assert (birth.lr_floor, birth.decay_over, birth.warmup_steps, birth.grad_clip, birth.eval_at_start) == (
        0.03, 400, 0, 0.0, True)


def test_resume_after_sigkill_gives_the_same_curve(tmp_path):
    _, straight = tiny_training(tmp_path / "straight")
    child = subprocess.run([sys.executable, "-c", "from tests.helpers import tiny_training; "
                            f"tiny_training({str(tmp_path / 'killed')!r}, kill_at=10)"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, child.stderr[-2000:]  # killed by SIGKILL, mid-run
    state = json.loads((tmp_path / "killed" / "train_state.json").read_text())
    assert state["step"] == 8  # the last checkpoint before the kill
    assert state["config"]["steps"] == 12 and state["config"]["seed"] == 0  # a record of the setting
    _, resumed = tiny_training(tmp_path / "killed")
    assert [r["step"] for r in resumed] == list(range(1, 13))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]  # bit for bit
    assert [r["val_loss"] for r in resumed] == [r["val_loss"] for r in straight]


def test_a_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path):
    model, _ = tiny_training(tmp_path / "ok", steps=4)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.fill_(float("nan"))
    model.save_pretrained(tmp_path / "ok")  # the next run resumes from poisoned weights ...
    state = json.loads((tmp_path / "ok" / "train_state.json").read_text())
    with pytest.raises(PipelineError, match="loss is nan at step 4: stopped; the last good checkpoint is kept"):
        tiny_training(tmp_path / "ok", steps=8)
    assert json.loads((tmp_path / "ok" / "train_state.json").read_text()) == state  # ... which is untouched


def test_freeze_until_holds_a_parameter_then_releases_it(tmp_path):
    assert frozen_at(2, ("3:transformer.h.1", "1:lm_head")) == ["transformer.h.1"]
    with pytest.raises(PipelineError, match="STEP:parameter.prefix"):
        frozen_at(0, ("later:h.1",))
    model, _ = tiny_training(tmp_path / "a", steps=3, freeze_until=("3:transformer.h.1.attn",))
    torch.manual_seed(0)
    from pipeline.models.ma_gpt2 import MAGPTConfig, MAGPTForCausalLM

    init = MAGPTForCausalLM(MAGPTConfig(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4))
    assert torch.equal(model.transformer.h[1].attn.c_attn.weight, init.transformer.h[1].attn.c_attn.weight)
    assert not torch.equal(model.transformer.h[0].attn.c_attn.weight, init.transformer.h[0].attn.c_attn.weight)
    model, _ = tiny_training(tmp_path / "a", steps=5, freeze_until=("3:transformer.h.1.attn",))
    assert not torch.equal(model.transformer.h[1].attn.c_attn.weight, init.transformer.h[1].attn.c_attn.weight)


def test_a_checkpoint_is_a_model(tmp_path):
    model, _ = tiny_training(tmp_path / "c", steps=4)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "c").eval()
    ids = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, again(ids).logits)


@pytest.mark.slow
def test_ddp_on_two_processes_equals_gradient_accumulation(tmp_path):
    """torchrun with 2 CPU processes (gloo), one micro-batch each, gives the losses of one process
    accumulating the same 2 micro-batches: the ranks take distinct batches and average them."""
    torchrun = ROOT / ".venv" / "bin" / "torchrun"
    if not torchrun.exists():
        torchrun = Path(sys.executable).with_name("torchrun")
    code = ("from tests.helpers import tiny_training; "
            f"tiny_training({str(tmp_path / 'ddp')!r}, steps=6, grad_accum=2)")
    child = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "tests.run_code", code],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "train_state.json").read_text())["history"]
    _, single = tiny_training(tmp_path / "one", steps=6, grad_accum=2)
    assert [r["loss"] for r in ddp] == pytest.approx([r["loss"] for r in single], rel=1e-5)


def test_a_checkpoint_of_another_setting_is_refused_not_resumed(tmp_path):
    """Defect N6: an explicit checkpoint_dir shared by two settings "resumed" the other setting (a
    run with lr=0.05 recorded the lr=1e-3 run's curve under its own setting, exit 0). The
    checkpoint records its config and seed; another setting is refused in one line; a longer run
    of the same setting resumes."""
    from pipeline.core.errors import PipelineError

    tiny_training(tmp_path / "shared", steps=4, lr=1e-3)
    with pytest.raises(PipelineError, match=r"another setting \(lr 0.001 there, 0.05 here\)"):
        tiny_training(tmp_path / "shared", steps=4, lr=0.05)
    _, longer = tiny_training(tmp_path / "shared", steps=6, lr=1e-3)  # extending the same run resumes
    assert [r["step"] for r in longer] == list(range(1, 7))


def test_a_diverging_run_stops_before_its_bad_update_reaches_a_checkpoint(tmp_path):
    """Defect N5: the NaN stop kept 'the last good checkpoint', written after the update that made
    the weights NaN (the loss of that step was still finite). Weights are checked before saving."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from pipeline.config.training import TrainConfig
    from pipeline.core.errors import PipelineError
    from pipeline.models.ma_gpt2 import MAGPTConfig, MAGPTForCausalLM
    from pipeline.train.data import TokenBatches
    from pipeline.train.loop import train

    torch.manual_seed(0)
    model = MAGPTForCausalLM(MAGPTConfig(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4))
    rng = np.random.RandomState(0)
    source = TokenBatches({"train": rng.randint(0, 64, 5000), "val": rng.randint(0, 64, 1000)},
                          micro_batch=4, block_size=16, seed=0)
    calls = []

    def poison(grad):  # the 3rd backward pass: a NaN gradient, while that step's loss is finite
        calls.append(1)
        return grad * float("nan") if len(calls) == 3 else grad

    model.lm_head.weight.register_hook(poison)
    cfg = TrainConfig(steps=6, warmup_steps=0, ckpt_every=1, eval_every=100, optimizer="sgd", grad_clip=0.0)
    with pytest.raises(PipelineError, match=r"not finite \(e.g. transformer.wte.weight\) after step 3: stopped before"):
        train(model, source.batch, cfg, tmp_path / "ck", device=torch.device("cpu"), seed=0)
    saved = load_file(str(tmp_path / "ck" / "model.safetensors"))  # the step-2 checkpoint, finite
    assert all(bool(torch.isfinite(t).all()) for t in saved.values())


def test_a_damaged_checkpoint_falls_back_to_the_older_one_or_stops_in_one_line(tmp_path, capsys):
    """Defect N4: damaged checkpoints gave raw tracebacks, a missing train_state.json silently
    restarted from step 0 (and overwrote the weights), and a sound last.old was not used when
    the last one was corrupt. Every part is verified on load now."""
    import shutil

    from pipeline.core.errors import PipelineError

    ck, keep = tmp_path / "ck", tmp_path / "step2"
    tiny_training(ck, steps=2, ckpt_every=2)
    shutil.copytree(ck, keep)
    tiny_training(ck, steps=4, ckpt_every=2)
    keep.rename(tmp_path / "ck.old")  # what a kill between the two renames of a save leaves
    weights = ck / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    _, history = tiny_training(ck, steps=6, ckpt_every=2)
    assert "ck: " in capsys.readouterr().out and [r["step"] for r in history] == list(range(1, 7))
    (ck / "train_state.json").unlink()  # and no older one left this time
    assert not (tmp_path / "ck.old").exists()
    with pytest.raises(PipelineError, match=r"checkpoint .*ck is damaged \(ck: FileNotFoundError"):
        tiny_training(ck, steps=8, ckpt_every=2)


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file data/0: "
                 "file write failed"),  # what torch.save raises on a full disk
    OSError(28, "No space left on device"),
])
def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_temporary_folder(tmp_path, monkeypatch, failure):
    """Defect N3: torch.save and safetensors do not raise OSError on a full disk: 21-35-line
    tracebacks, and a 40 MB ``last.tmp`` left filling the disk. Now one line, the folder removed,
    the previous checkpoint kept."""
    ck = tmp_path / "ck"
    tiny_training(ck, steps=2, ckpt_every=2)
    before = (ck / "model.safetensors").read_bytes()

    def full(*_args, **_kwargs):
        raise failure

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(PipelineError, match=r"could not write checkpoint .*ck: .*\(the previous checkpoint is kept; "
                                            r"free space and run again\)") as err:
        tiny_training(ck, steps=4, ckpt_every=2)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"], "a temporary folder was left behind"
    assert (ck / "model.safetensors").read_bytes() == before


def test_an_error_that_is_not_a_write_failure_is_not_hidden_as_one(tmp_path):
    """A bug inside a save stays a traceback (and still leaves no temporary folder)."""
    from pipeline.core.disk import replacing, write_failure

    assert write_failure(RuntimeError("shape mismatch")) is None
    assert write_failure(type("SafetensorError", (Exception,), {})("Error while writing: No space left")) is not None
    with pytest.raises(KeyError), replacing(tmp_path / "cache", "the model cache"):
        raise KeyError("a bug")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_compiled_training_matches_eager_and_decay_sets(tmp_path):
    """``compile=true`` (torch.compile, inductor, on a CPU at tiny size) trains to the same losses
    as the eager model; ``decay: all`` (paper C's official optimizer) decays the LayerNorm weights
    too, ``matrices`` (nanoGPT) does not; a bad choice fails in one line when the config is read."""
    import numpy as np
    import torch

    from pipeline.config.training import TrainConfig
    from pipeline.core.errors import PipelineError
    from pipeline.models.ma_gpt2 import MAGPTConfig, MAGPTForCausalLM
    from pipeline.train.data import TokenBatches
    from pipeline.train.loop import make_optimizer, train

    rng = np.random.RandomState(0)
    source = TokenBatches({"train": rng.randint(0, 64, 5000), "val": rng.randint(0, 64, 1000)},
                          micro_batch=4, block_size=16, seed=0)

    def losses(compile_: bool) -> list[float]:
        torch.manual_seed(0)
        model = MAGPTForCausalLM(MAGPTConfig(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4))
        cfg = TrainConfig(steps=3, warmup_steps=0, eval_every=100, save_at_end=False, ckpt_every=100,
                          compile=compile_)
        return [r["loss"] for r in train(model, source.batch, cfg, tmp_path / f"ck{compile_}",
                                         device=torch.device("cpu"), seed=0)]

    eager, compiled = losses(False), losses(True)
    assert np.allclose(eager, compiled, atol=1e-4), (eager, compiled)
    model = MAGPTForCausalLM(MAGPTConfig(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=4, bias=True))
    norms = {id(p) for n, p in model.named_parameters() if ".ln_" in n}
    for decay, decayed in (("matrices", False), ("all", True)):
        groups = make_optimizer(model, TrainConfig(decay=decay)).param_groups
        assert any(id(p) in norms for p in groups[0]["params"]) == decayed and groups[0]["weight_decay"] > 0
    with pytest.raises(PipelineError, match="precision='fp16': one of bf16, fp32"):
        TrainConfig(precision="fp16")
