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
from tests.helpers import run_stage

PHOTOS = {"name": "photos", "kind": "images", "source": "skimage",
          "names": ["astronaut", "coffee", "chelsea", "rocket"]}


def tiny_vit(plant: float | None = None, sink: bool = False) -> Dinov2WithRegistersModel:
    """A random DINOv2-with-registers (4 registers, 3 blocks of 32); ``plant``: register 3's
    embedding carries that value in dim 7, which the residual stream keeps in every block;
    ``sink``: every query's bias points at that direction's key, so every block attends to
    register 3 (a learned-bias-like use of the massive activation, as paper A describes)."""
    torch.manual_seed(0)
    m = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                                           image_size=56, patch_size=14, num_register_tokens=4)).eval()
    with torch.no_grad():
        if plant is not None:
            m.embeddings.register_tokens[0, 2, 7] = plant
        if sink:
            for block in m.encoder.layer:
                wk = block.attention.k_proj.weight[:, 7]
                block.attention.q_proj.bias.copy_(10 * wk / wk.norm() ** 2)
    return m


def vit_ctx(tmp_path, model, processor, data=PHOTOS, paper_key=None):
    results = ResultsWriter(tmp_path / "results", "vit", model="tiny_vit", revision=None, dataset=data["name"], seed=0,
                            device="cpu")
    return Context(model=model, tokenizer=processor, arch=get_arch(model), device=torch.device("cpu"),
                   model_name="tiny_vit", paper_key=paper_key, data_cfg=data, source=build_source(data),
                   results=results, logger=Logger(), experiment="vit", seed=0,
                   catalog=Catalog({"data": {data["name"]: data}, "paper": Catalog.from_files().entries["paper"]}))


def small_processor() -> BitImageProcessor:
    return BitImageProcessor(do_resize=True, size={"height": 56, "width": 56}, do_center_crop=False)


def test_prefix_roles_read_the_register_count():
    assert prefix_roles(tiny_vit()) == ["cls", "reg_1", "reg_2", "reg_3", "reg_4"]


def test_planted_register_outlier_is_found_on_reg_3(tmp_path):
    ctx = vit_ctx(tmp_path, tiny_vit(plant=4000.0), small_processor())
    out = run_stage("vit_profile", ctx, n_images=4, batch_size=2)
    steady = [m for m in out["massive"] if m["steady"]]
    assert [(m["dim"], m["token_type"], m["first_layer"]) for m in steady] == [(7, "reg_3", 0)]
    land = ctx.results.read("vit_landscape")
    assert list(land.drop_duplicates("position")["token"][:5]) == ["<cls>", "<reg_1>", "<reg_2>", "<reg_3>", "<reg_4>"]
    assert land.loc[(land["token"] == "<reg_3>") & (land["dim"] == 7), "abs_value"].iloc[0] > 1000
    assert "massive: dim 7 on reg_3" in vit_profile.format_summary(out)
    as_paper = run_stage("vit_profile",
                         vit_ctx(tmp_path / "g", tiny_vit(plant=4000.0), small_processor(), paper_key="dinov2_reg_g"),
                         n_images=2, batch_size=2)  # the paper's numbers are printed beside ours
    assert "paper A massive_dims: [179, 999] (verified" in vit_profile.format_summary(as_paper)


def test_no_outlier_means_none_found(tmp_path):
    out = run_stage("vit_profile", vit_ctx(tmp_path, tiny_vit(), small_processor()), n_images=2, batch_size=2)
    assert not [m for m in out["massive"] if m["steady"]]
    assert "massive activations: none found" in vit_profile.format_summary(out)


def test_a_text_dataset_is_refused_in_one_line(tmp_path):
    from pipeline.core.errors import PipelineError

    text = {"name": "t", "kind": "text", "text": "hello"}
    with pytest.raises(PipelineError, match="needs an image dataset"):
        run_stage("vit_profile", vit_ctx(tmp_path, tiny_vit(), small_processor(), data=text), n_images=1)


def test_fix_reg_mean_and_set_mean_keep_the_planted_model_set_zero_breaks_it(tmp_path):
    from pipeline.stages import vit_intervene

    model = tiny_vit(plant=4000.0, sink=True)
    pixels = small_processor()(images=[np.full((56, 56, 3), 90, np.uint8)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        before = model(pixel_values=pixels).last_hidden_state
    data = {**PHOTOS, "names": None}  # every shipped photo: 4 to evaluate, 4 to calibrate
    out = run_stage("vit_intervene", vit_ctx(tmp_path, model, small_processor(), data=data), eval_images=4,
                    calib_images=4, calib_views=4, probe_images=60)
    change = {r["condition"]: r["value"] for r in out["rows"] if r["metric"] == "pooled_rel_l2_change"}
    assert [(s["token_type"], s["dim"]) for s in out["sites"]] == [("reg_3", 7)]
    assert change["original"] == 0 and change["set_mean"] < 1e-3 and change["fix_reg_mean"] < 0.02
    assert change["set_zero"] > 0.1  # the model relied on the outlier as a fixed bias
    with torch.no_grad():
        assert torch.equal(model(pixel_values=pixels).last_hidden_state, before)  # bit-identical on exit
    plain = run_stage("vit_intervene", vit_ctx(tmp_path / "p", tiny_vit(), small_processor(), data=data), eval_images=4,
                              calib_images=4, calib_views=2, probe_images=0, conditions=["set_zero", "fix_reg_mean"])
    reasons = {r["condition"]: r["why"] for r in plain["rows"] if r["metric"] == "not_applicable"}
    assert reasons == {"set_zero": "no steady massive activation on a CLS / register token"}
    assert "not applicable" in vit_intervene.format_summary(plain)


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
    out = run_stage("vit_profile", vit_ctx(tmp_path, model, processor), n_images=4, batch_size=2)
    assert not [m for m in out["massive"] if m["steady"]]
    assert max(r["top1"] for r in out["layers"]) < 100  # paper A's absolute threshold is far away


@pytest.mark.parametrize("model", ["dinov2_reg_g", "clip_vit_l", "dinov2_reg_s", "dinov2_l"])
@pytest.mark.parametrize("experiment", ["massive_activations_vit_profile", "massive_activations_vit_intervene"])
def test_paper_settings_compose(model, experiment):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pipeline.core.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}", f"model={model}", "hydra/launcher=slurm"],
                      return_hydra_config=True)
    OmegaConf.to_container(cfg.model, resolve=True, throw_on_missing=True)
    assert cfg.model.source == "hub" and cfg.data.kind == "images"
    assert (cfg.model.paper_key or "").startswith("dinov2_reg") == model.startswith("dinov2_reg")


def test_image_encoders_are_known_by_their_arch_spec():
    from pipeline.models.arch import is_image_encoder
    from pipeline.models.ma_gpt2 import MAGPTConfig

    assert is_image_encoder(tiny_vit()) and is_image_encoder(tiny_vit().config)
    assert not is_image_encoder(MAGPTConfig()) and not is_image_encoder(object())
