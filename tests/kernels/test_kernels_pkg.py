"""Our top-level ``kernels`` package must not confuse transformers' probe for the Hub package."""

import importlib

import torch


def test_transformers_models_work_with_our_kernels_package_importable():
    ours = importlib.import_module("kernels")
    assert not hasattr(ours, "get_kernel") and not hasattr(ours, "use_kernel_forward_from_hub")
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4,
                                         num_key_value_heads=2))
    with torch.no_grad():
        assert model(torch.randint(0, 64, (1, 5))).logits.shape == (1, 5, 64)
