"""A guard against drift from paper C's official code: run the official model classes
(albietz/transformer-birth, from YOUR checkout; nothing of it is copied into this project) on
small seeded weights and a fixed batch, and write what they give under
``results/reference/birth_official/``: the weights (official parameter names), the batch and the
logits, with the official commit. ``tests/unit/test_birth_reference.py`` loads those weights into
this project's classes and checks the logits offline, so a change to our model that departs from
the official one fails a test even where the official code is absent.

    git clone https://github.com/albietz/transformer-birth /tmp/transformer-birth
    python scripts/birth_official_reference.py --official /tmp/transformer-birth

Two models, the ones paper C's figures use: the full model (``ihead_full_model.py``: pre-norm,
4 heads, ReLU FFN in both layers, learned positions) and the simplified one
(``ihead_basic_model.py``: W_Q = identity, random fixed positions, a final linear FFN).

And the official probes: the official training script (``ihead_basic_main.py``, unmodified,
executed here on the CPU with ``.cuda()`` made a no-op) runs ``PROBE_STEPS`` SGD steps on its own
data generator and logs its probes (acc_end, score_acc, wk0, wo1, ...) at its last evaluation.
``probes.safetensors`` keeps the weights before that step's update (which the batch probes see)
and after it (which the memory probes and the OOD test see), that step's batch, the OOD test
batch and the bigram matrix; ``probes.json`` the official values. The test recomputes every
probe with :mod:`pipeline.analysis.induction` from those tensors.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "reference" / "birth_official"
VOCAB, DIM, LENGTH, SEED = 65, 32, 64, 0  # the 65 Shakespeare characters; small enough to commit (~130 KB)
PROBE_STEPS = 21
PROBE_ARGS = [  # the official README's command, smaller (d 32, T 128, batch 32, 21 steps) and with the final FFN
    f"max_iters={PROBE_STEPS}", "eval_delta=10", "seed=0", "num_data_workers=2", "log_probes=true",
    "loss_head_only=true", "data_args.k=5", "data_args.fixed_special_toks=true", "data_args.seq_length=128",
    "optim_args.use_sgd=true", "optim_args.learning_rate=0.2", "optim_args.batch_size=32", "model_args.dim=32",
    "model_args.max_length=128", "model_args.final_ffn=true", "model_args.freeze_embeddings=true",
    "model_args.freeze_output=true"]


def official_models(checkout: Path) -> dict[str, torch.nn.Module]:
    """The official classes, built on the CPU with seeded initialisation (their own)."""
    sys.path.insert(0, str(checkout))
    import ihead_basic_model as basic
    import ihead_full_model as full

    torch.manual_seed(SEED)
    models = {"full": full.Transformer(full.ModelArgs(vocab_size=VOCAB, dim=DIM, n_heads=4, n_layers=2,
                                                      max_length=LENGTH))}
    torch.manual_seed(SEED + 1)
    models["simplified"] = basic.Transformer(basic.ModelArgs(vocab_size=VOCAB, dim=DIM, max_length=LENGTH,
                                                             final_ffn=True))
    return models


def official_probe_run(checkout: Path, out: Path) -> dict:
    """Run the official ``ihead_basic_main.py`` for ``PROBE_STEPS`` steps and keep what its last
    evaluation saw; returns that evaluation's logged values."""
    import multiprocessing as mp
    import os
    import types

    sys.path.insert(0, str(checkout))
    import ihead_data

    batches, before = [], []
    official_iterate = ihead_data.iterate_batches

    def iterate_batches(*args, **kwargs):  # the official generator, each batch kept
        for batch in official_iterate(*args, **kwargs):
            batches.append(batch)
            yield batch

    ihead_data.iterate_batches = iterate_batches
    sgd_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):  # the weights an iteration's forward pass saw, before its update
        before[:] = [p.detach().clone() for group in self.param_groups for p in group["params"]]
        return sgd_step(self, *args, **kwargs)

    torch.optim.SGD.step = step
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    script = checkout / "ihead_basic_main.py"
    cwd, argv = os.getcwd(), sys.argv
    os.chdir(checkout)  # it reads data/meta.pkl from there
    sys.argv = [str(script), *PROBE_ARGS]  # no save_dir: its params.json cannot serialise nested configs
    main_module, sys.modules["__main__"] = sys.modules["__main__"], types.ModuleType("__main__")
    scope = sys.modules["__main__"].__dict__  # its dataclasses resolve their types in __main__
    scope["__file__"] = str(script)
    try:
        exec(compile(script.read_text(), str(script), "exec"), scope)
    except SystemExit:  # the official loop ends with sys.exit(0) at max_iters
        pass
    finally:
        os.chdir(cwd)
        sys.argv, sys.modules["__main__"] = argv, main_module
        for worker in mp.active_children():
            worker.kill()
    logged = [r for r in scope["res"] if "iter" in r]  # the evaluations' logged values (its `res` list)
    last, model, ds = logged[-1], scope["model"], scope["ds"]
    x, y, outs = batches[last["iter"]]
    names = [n for n, _ in model.named_parameters()]
    state = {f"after.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()
             if k != "freqs_cis"}  # RoPE tables, unused (use_rope false)
    state.update({f"before.{n}": p.contiguous() for n, p in zip(names, before, strict=True)})
    ints = {"x": x, "y": y, "outs": outs, "x_test": scope["x_t"], "y_test": scope["y_t"], "outs_test": scope["outs_t"]}
    ints = {k: torch.as_tensor(v) for k, v in ints.items()}
    if any(int(v.min()) < -2**15 or int(v.max()) >= 2**15 for v in ints.values()):
        raise SystemExit("error: token ids or counters outside int16, which the reference format assumes")
    tensors = {**state, **{k: v.to(torch.int16) for k, v in ints.items()},  # int16: small, and enough
               "bigram": torch.tensor(np.array(ds.cond), dtype=torch.float32)}
    save_file(tensors, str(out / "probes.safetensors"))
    setting = {"script": "ihead_basic_main.py", "args": PROBE_ARGS, "n_train_tokens": ds.n_train_toks,
               "fixed_triggers": [int(i) for i in ds.idxs]}
    (out / "probes.json").write_text(json.dumps({"setting": setting, "official": last}, indent=2) + "\n")
    print(f"probes at iteration {last['iter']}: acc_end {last['acc_end']:.4f}, wk0_64 {last['wk0_64_acc']:.4f} "
          f"-> {out / 'probes.json'}")
    return last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", type=Path, required=True, help="a checkout of albietz/transformer-birth")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    if not (a.official / "ihead_full_model.py").is_file():
        sys.exit(f"error: {a.official} is not a checkout of albietz/transformer-birth (no ihead_full_model.py)")
    commit = subprocess.run(["git", "-C", str(a.official), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    tokens = torch.randint(0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(SEED))
    a.out.mkdir(parents=True, exist_ok=True)
    meta = {"official_repo": "albietz/transformer-birth", "official_commit": commit, "vocab_size": VOCAB,
            "dim": DIM, "length": LENGTH, "seed": SEED, "torch": torch.__version__, "models": {}}
    for name, model in official_models(a.official).items():
        with torch.no_grad():  # norms away from their (1, 0) start, so that a wrong norm placement shows
            g = torch.Generator().manual_seed(SEED + 2)
            for p in model.parameters():
                if p.dim() == 1:
                    p.add_(0.1 * torch.randn(p.shape, generator=g))
        model.eval()
        with torch.no_grad():
            logits = model(tokens).float()
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k != "freqs_cis"}
        save_file({**{f"weight.{k}": v for k, v in state.items()}, "tokens": tokens, "logits": logits},
                  str(a.out / f"{name}.safetensors"))
        meta["models"][name] = {"parameters": sorted(state), "logits_abs_max": float(logits.abs().max())}
        print(f"{name}: {len(state)} tensors, logits {tuple(logits.shape)} -> {a.out / f'{name}.safetensors'}")
    (a.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    official_probe_run(a.official, a.out)


if __name__ == "__main__":
    main()
