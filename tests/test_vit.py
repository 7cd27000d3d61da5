"""Vision encoders: arch specs with prefix tokens, the embedded DINOv2-S (converted from ONNX,
checked against the graph itself), image sources, and the ViT profile on a planted model."""

import numpy as np
import pytest
import torch
from transformers import BitImageProcessor, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from pipeline.context import Context
from pipeline.core.catalog import Catalog
from pipeline.core.loggers import Logger
from pipeline.core.results import ResultsWriter
from pipeline.data.text import build_source
from pipeline.models.arch import get_arch, prefix_roles
from pipeline.stages import vit_profile

PHOTOS = {"name": "photos", "kind": "images", "source": "skimage", "names": ["astronaut", "coffee", "chelsea", "rocket"]}


def tiny_vit(plant: float | None = None) -> Dinov2WithRegistersModel:
    """A random DINOv2-with-registers (4 registers, 3 blocks of 32); ``plant``: register 3's
    embedding carries that value in dim 7, which the residual stream keeps in every block."""
    torch.manual_seed(0)
    m = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                                           image_size=56, patch_size=14, num_register_tokens=4)).eval()
    if plant is not None:
        with torch.no_grad():
            m.embeddings.register_tokens[0, 2, 7] = plant
    return m


def vit_ctx(tmp_path, model, processor, data=PHOTOS):
    results = ResultsWriter(tmp_path / "results", "vit", model="tiny_vit", revision=None, dataset=data["name"], seed=0,
                            device="cpu")
    return Context(model=model, tokenizer=processor, arch=get_arch(model), device=torch.device("cpu"),
                   model_name="tiny_vit", paper_key=None, data_cfg=data, source=build_source(data), results=results,
                   logger=Logger(), experiment="vit", seed=0, catalog=Catalog({"data": {data["name"]: data}}))


def small_processor() -> BitImageProcessor:
    return BitImageProcessor(do_resize=True, size={"height": 56, "width": 56}, do_center_crop=False)


def test_prefix_roles_read_the_register_count():
    assert prefix_roles(tiny_vit()) == ["cls", "reg_1", "reg_2", "reg_3", "reg_4"]


def test_planted_register_outlier_is_found_on_reg_3(tmp_path):
    ctx = vit_ctx(tmp_path, tiny_vit(plant=4000.0), small_processor())
    out = vit_profile.run(ctx, n_images=4, batch_size=2)
    steady = [m for m in out["massive"] if m["steady"]]
    assert [(m["dim"], m["token_type"], m["first_layer"]) for m in steady] == [(7, "reg_3", 0)]
    land = ctx.results.read("vit_landscape")
    assert list(land.drop_duplicates("position")["token"][:5]) == ["<cls>", "<reg_1>", "<reg_2>", "<reg_3>", "<reg_4>"]
    assert land.loc[(land["token"] == "<reg_3>") & (land["dim"] == 7), "abs_value"].iloc[0] > 1000
    assert "massive: dim 7 on reg_3" in vit_profile.format_summary(out)


def test_no_outlier_means_none_found(tmp_path):
    out = vit_profile.run(vit_ctx(tmp_path, tiny_vit(), small_processor()), n_images=2, batch_size=2)
    assert not [m for m in out["massive"] if m["steady"]]
    assert "massive activations: none found" in vit_profile.format_summary(out)


def test_a_text_dataset_is_refused_in_one_line(tmp_path):
    from pipeline.core.errors import PipelineError

    text = {"name": "t", "kind": "text", "text": "hello"}
    with pytest.raises(PipelineError, match="needs an image dataset"):
        vit_profile.run(vit_ctx(tmp_path, tiny_vit(), small_processor(), data=text), n_images=1)


@pytest.mark.real
def test_embedded_dinov2_matches_its_onnx_graph_and_is_a_negative_control(tmp_path):
    """The converted Dinov2Model against onnxruntime running the package's own graph on a real
    photo (the backbone's final LayerNorm output), then the profile: no massive activations."""
    import onnx
    import onnxruntime as ort
    from omegaconf import OmegaConf
    from skimage import data

    from pipeline.core.paths import CONF_DIR
    from pipeline.models.load import load_model
    from pipeline.models.onnx_import import onnx_path

    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "dinov2_s_offline.yaml"))
    cfg["device"] = "cpu"
    model, processor, _ = load_model(cfg)
    x = processor(images=data.astronaut(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ours = model(pixel_values=x).last_hidden_state.numpy()
    graph = onnx.load(str(onnx_path(cfg)))
    name = "/backbone/layernorm/Add_1_output_0"
    graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    theirs = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        [name], {"input_image": x.numpy()})[0]
    assert ours.shape == theirs.shape == (1, 257, 384)
    assert np.abs(ours - theirs).max() < 1e-3 and np.abs(theirs).max() > 5
    out = vit_profile.run(vit_ctx(tmp_path, model, processor), n_images=4, batch_size=2)
    assert not [m for m in out["massive"] if m["steady"]]
    assert max(r["top1"] for r in out["layers"]) < 100  # paper A's absolute threshold is far away
