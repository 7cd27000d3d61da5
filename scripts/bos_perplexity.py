"""Perplexity of one model on catalog datasets under each BOS rule, on the same windows.

    python scripts/bos_perplexity.py --model gemma3_270m --data wiki_summaries austen

`auto` follows the tokenizer (BOS first in each window when it adds one: 1 BOS + seq_len - 1
tokens); `never` gives the first seq_len tokens of the same stream without it. Writes
results/any_model/bos_perplexity.csv (one row per model, dataset and rule, replaced on re-runs
of the same model) and prints the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from pipeline.core.catalog import Catalog
from pipeline.core.results import git_sha
from pipeline.core.store import atomic_write
from pipeline.data.text import dataset_windows, resolve_bos
from pipeline.evaluation.perplexity import perplexity
from pipeline.models.load import load_model

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3_270m", help="a conf/model name")
    ap.add_argument("--data", nargs="+", default=["wiki_summaries", "austen"], help="conf/data names")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "results" / "any_model" / "bos_perplexity.csv"))
    args = ap.parse_args()
    model, tok, device = load_model(OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{args.model}.yaml")))
    catalog, rows = Catalog.from_files(), []
    for name in args.data:
        for rule in ("auto", "never"):
            w = dataset_windows(tok, name, seq_len=args.seq_len, n_windows=args.windows, catalog=catalog, bos=rule)
            res = perplexity(model, w, device=device, desc=f"{name} bos={rule}")
            rows.append({"model": args.model, "dataset": name, "bos_rule": rule,
                         "bos_resolved": resolve_bos(tok, rule), "seq_len": args.seq_len,
                         "n_windows": args.windows, "ppl": res["ppl"], "nll": res["nll"],
                         "git_sha": git_sha(), "device": str(device)})
    out = Path(args.out)
    old = pd.read_csv(out) if out.exists() else pd.DataFrame()
    if len(old):
        old = old[old["model"] != args.model]
    table = pd.concat([old, pd.DataFrame(rows)], ignore_index=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda fh: table.to_csv(fh, index=False))
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
