import time

import pytest
import torch

from pipeline.core.errors import PipelineError
from pipeline.models.load import load_model, resolve_device, resolve_dtype


def test_auto_dtype_and_device_on_cpu():
    dev = resolve_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(PipelineError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))


def test_hub_model_offline_fails_at_once():
    cfg = {"name": "llama2_7b", "source": "hub", "hub_id": "meta-llama/Llama-2-7b-hf", "revision": None}
    t0 = time.perf_counter()
    with pytest.raises(PipelineError, match="not in the local Hugging Face cache"):
        load_model(cfg)
    assert time.perf_counter() - t0 < 10


def test_unknown_source_and_missing_package():
    with pytest.raises(PipelineError, match="unknown source"):
        load_model({"name": "x", "source": "ftp"})
    with pytest.raises(PipelineError, match="not installed"):
        load_model({"name": "x", "source": "gguf", "package": "no_such_pkg_xyz", "gguf_file": "a.gguf"})


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tiny_models_are_deterministic(arch):
    cfg = {"name": f"tiny_{arch}", "source": "tiny", "arch": arch, "dtype": "float32", "device": "cpu"}
    (m1, tok, _), (m2, _, _) = load_model(cfg), load_model(cfg)
    ids = tok("Summer is warm. Winter is cold.", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(m1(ids).logits, m2(ids).logits)


@pytest.mark.parametrize("value,expected", [(False, False), ("false", False), ("no", False), ("0", False),
                                            (True, True), ("true", True), ("yes", True)])
def test_trust_remote_code_is_read_strictly(value, expected):
    """Defect: trust_remote_code: 'false' (a string) reached from_pretrained as True."""
    from pipeline.models.load import config_bool

    assert config_bool({"trust_remote_code": value}, "trust_remote_code") is expected


def test_trust_remote_code_garbage_is_an_error():
    from pipeline.models.load import config_bool

    with pytest.raises(PipelineError, match="not a yes/no value"):
        config_bool({"name": "m", "trust_remote_code": "maybe"}, "trust_remote_code")
