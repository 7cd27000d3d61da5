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
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "reference" / "birth_official"
VOCAB, DIM, LENGTH, SEED = 65, 32, 64, 0  # the 65 Shakespeare characters; small enough to commit (~130 KB)


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


if __name__ == "__main__":
    main()
