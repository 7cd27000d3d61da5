"""The GPT-2 experiment's settings and cluster path: setting=paper / reduced compose to the paper's numbers,
SLURM tasks become DDP ranks, and a Hub corpus is prepared into token files like nanoGPT's."""

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from pipeline.core.catalog import Catalog
from pipeline.core.errors import PipelineError
from pipeline.core.ranks import adopt_slurm_env, first_host
from pipeline.models.tiny import tiny_tokenizer as tiny_tok
from pipeline.train.corpus import corpus_tokens

CONF = Path(__file__).resolve().parents[2] / "conf"


def _compose(overrides, hydra_cfg=False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra_cfg)


def test_paper_setting_is_paper_a_gpt2_recipe():
    cfg = _compose(["experiment=massive_activations_gpt2_sink", "setting=paper", "model=ma_gpt2_paper"])
    st, m = cfg.stage.train_lm, cfg.model
    assert st.micro_batch * st.grad_accum * st.block_size == 491_520  # tokens per step, all GPUs
    assert (st.steps, st.decay_steps, st.warmup_steps, st.lr, st.min_lr) == (50_000, 600_000, 2_000, 6e-4, 6e-5)
    assert (m.init.n_layer, m.init.n_embd, m.init.n_head, m.init.vocab_size) == (12, 768, 12, 50_304)
    assert m.tokenizer.hub_id == "gpt2" and list(st.data) == ["openwebtext"]
    assert m.name == "ma_gpt2_paper_sink" and m.init.sink_tokens == 1
    from pipeline.config import typed_args

    args = typed_args("train_lm", st)  # what the loop reads: the composed node, typed
    assert (args.decay_over, args.lr_floor) == (600_000, 6e-5)
    offline = typed_args("train_lm", _compose(["experiment=massive_activations_gpt2_sink"]).stage.train_lm)
    assert offline.decay_steps is None and offline.decay_over == offline.steps  # null: cosine over the run


def test_reduced_setting_and_offline_names():
    gpu = _compose(["experiment=massive_activations_gpt2_attn_bias", "setting=reduced", "model=ma_gpt2_gpu"])
    assert gpu.model.name == "ma_gpt2_gpu_attn_bias" and gpu.model.init.attn_bias
    assert 2_000 <= gpu.stage.train_lm.steps <= 5_000
    offline = _compose(["experiment=massive_activations_gpt2_default"])
    assert offline.model.name == "ma_gpt2_default"  # the committed offline results keep their names


def test_slurm_ddp_launcher_runs_one_task_per_gpu():
    cfg = _compose(["experiment=massive_activations_gpt2_default", "setting=paper", "model=ma_gpt2_paper",
                    "hydra/launcher=slurm_ddp"], hydra_cfg=True)
    launcher = cfg.hydra.launcher
    assert "pipeline_launcher" in launcher._target_ and launcher.tasks_per_node == launcher.gpus_per_node == 8


def test_slurm_tasks_become_torchrun_ranks(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: the node list is parsed here
    env = {"SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NTASKS": "16", "SLURM_JOB_ID": "123456",
           "SLURM_JOB_NODELIST": "gpu[003-004]"}
    assert adopt_slurm_env(env)
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == ("9", "1", "16", "gpu003")
    assert env["MASTER_PORT"] == str(20000 + 123456 % 20000)
    single = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}  # one task: not distributed
    assert not adopt_slurm_env(single) and "RANK" not in single
    torchrun = {"WORLD_SIZE": "2", "RANK": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "4"}
    assert not adopt_slurm_env(torchrun) and torchrun["RANK"] == "1"  # torchrun's own variables win
    assert first_host("node7") == "node7" and first_host("a[10,12-14],b1") == "a10"


def test_hub_corpus_prepared_like_nanogpt(tmp_path):
    tiny_tokenizer = tiny_tok()
    docs = [f"document {i}: " + "the cat sat on the mat. " * (1 + i % 5) for i in range(200)]
    data = tmp_path / "corpus.jsonl"
    data.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    catalog = Catalog({"data": {"fixture": {"name": "fixture", "kind": "hub", "hub_id": "json", "hub_split": "train",
                                            "data_files": str(data), "val_fraction": 0.1, "text_field": "text"}}})
    out = corpus_tokens(tiny_tokenizer, ["fixture"], catalog, num_proc=1, cache=tmp_path)
    eot = tiny_tokenizer.eos_token_id
    expected = sum(len(tiny_tokenizer(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs)
    assert len(out["train"]) + len(out["val"]) == expected  # every document, each closed by end-of-text
    assert int(np.sum(out["val"] == eot)) == 20 and int(np.sum(out["train"] == eot)) == 180
    assert not list(tmp_path.rglob("*.tmp"))
    again = corpus_tokens(tiny_tokenizer, ["fixture"], catalog, num_proc=1, cache=tmp_path)  # cached: same ids
    assert np.array_equal(again["train"], out["train"])
    with pytest.raises(PipelineError, match="trained on alone"):
        corpus_tokens(tiny_tokenizer, ["fixture", "fixture2"],
                      Catalog({"data": {"fixture": catalog.get("data", "fixture"),
                                        "fixture2": {"name": "fixture2", "kind": "text", "text": "x"}}}),
                      cache=tmp_path)


def _prepare_as_rank(rank: int, world: int, port: int, catalog_data: dict, cache: str, log: str) -> None:
    """One DDP rank of the test below: prepares (or waits for) the corpus, writes what it read."""
    import os

    from pipeline.train import corpus

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    prepare = corpus._prepare_hub

    def counted(*args, **kwargs):
        with open(log, "a") as fh:
            fh.write(f"prepared by rank {rank}\n")
        return prepare(*args, **kwargs)

    corpus._prepare_hub = counted
    out = corpus.corpus_tokens(tiny_tok(), ["owt"], Catalog({"data": catalog_data}), num_proc=1, cache=Path(cache))
    np.save(Path(cache) / f"rank{rank}.npy", out["train"])
    import torch.distributed as dist

    dist.destroy_process_group()


def test_two_ranks_prepare_a_parquet_corpus_once(tmp_path):
    """Rank 0 prepares, rank 1 waits at a barrier and reads the same token file (with two torchrun
    ranks rank 1 used to crash renaming the shared train.bin.tmp); the corpus is read from a local
    Parquet file by the ``parquet`` builder, as the paper tier reads OpenWebText."""
    import socket

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch.multiprocessing as mp

    docs = [f"web page {i}: " + "the cat sat on the mat. " * (1 + i % 4) for i in range(120)]
    pq.write_table(pa.table({"text": docs}), tmp_path / "owt.parquet")
    data = {"owt": {"name": "owt", "kind": "hub", "hub_id": "Skylion007/openwebtext", "builder": "parquet",
                    "data_files": str(tmp_path / "owt.parquet"), "val_fraction": 0.1, "text_field": "text"}}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "prepared.log"
    mp.spawn(_prepare_as_rank, args=(2, port, data, str(tmp_path), str(log)), nprocs=2, join=True)
    assert log.read_text() == "prepared by rank 0\n"
    first, second = np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "rank1.npy")
    assert np.array_equal(first, second) and len(first) > 0
    eot = tiny_tok().eos_token_id
    assert int(np.sum(first == eot)) == 108  # 90% of the 120 documents, each closed by end-of-text
