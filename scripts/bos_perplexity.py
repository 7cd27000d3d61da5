"""Perplexity of one model on catalog datasets under each BOS rule, on the same windows.

    python scripts/bos_perplexity.py --model gemma3_270m --data wiki_summaries austen

`auto` follows the tokenizer (BOS first in each window when it adds one: 1 BOS + seq_len - 1
tokens); `never` gives the first seq_len tokens of the same stream without it. Writes
results/any_model/bos_perplexity/bos_perplexity.csv through the results writer (provenance per
row, one shard per model and setting, replaced on re-runs of the same setting) and prints it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.bench import device_name
from pipeline.core.catalog import Catalog
from pipeline.core.results import ResultsWriter
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
    ap.add_argument("--results", default=str(ROOT / "results" / "any_model"))
    args = ap.parse_args()
    model_cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{args.model}.yaml"))
    model, tok, device = load_model(model_cfg)
    catalog, rows = Catalog.from_files(), []
    for name in args.data:
        for rule in ("auto", "never"):
            w = dataset_windows(tok, name, seq_len=args.seq_len, n_windows=args.windows, catalog=catalog, bos=rule)
            res = perplexity(model, w, device=device, desc=f"{name} bos={rule}")
            rows.append({"eval_data": name, "bos_rule": rule, "bos_resolved": resolve_bos(tok, rule),
                         "seq_len": args.seq_len, "n_windows": args.windows, "ppl": res["ppl"], "nll": res["nll"]})
    writer = ResultsWriter(Path(args.results), "bos_perplexity", model=args.model, revision=model_cfg.get("revision"),
                           dataset="+".join(args.data), seed=0, device=device_name(device),
                           setting={k: v for k, v in vars(args).items() if k != "results"})
    writer.write("bos_perplexity", rows, stage="bos_perplexity")
    writer.commit({k: str(v) for k, v in vars(args).items()})
    print(writer.read("bos_perplexity")[["model", "eval_data", "bos_rule", "bos_resolved", "ppl"]]
          .to_string(index=False))

if __name__ == "__main__":
    main()
