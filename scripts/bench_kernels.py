"""Benchmark: the quantization kernels (kernels/) against their torch references and a plain copy.

In one run, interleaved over repeats (shared, noisy machines: only ratios within a run count), for
each op and size: ``copy`` (out.copy_(in): the device's achievable read+write bandwidth here),
``reference`` (the pure-torch ``<op>_ref``) and, on CUDA, ``triton`` (the compiled kernel).
Achieved bandwidth = (bytes read once + bytes written) / median time, and its fraction of the
copy's bandwidth measured in the same run. Sizes: a 4096 x 11008 matrix (LLaMA-7B's MLP), the
activations of 4096 tokens x 4096 / 11008 channels, and a LLaMA-7B-shaped layer stack of random
weights (``--stack-layers``, 32 on CUDA; default 1 on CPU, where the references run at a few
hundred MB/s). Target on an H100/H200: >= 70% of copy bandwidth for the weight kernel.

Writes results/bench/kernels.csv with the device in every row.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from kernels.block_quant import block_fake_quant_ref, block_fake_quant_triton
from kernels.tensor_quant import tensor_fake_quant_ref, tensor_fake_quant_triton
from kernels.token_quant import token_fake_quant_ref, token_fake_quant_triton
from pipeline.bench import device_name, time_interleaved
from pipeline.core.results import ResultsWriter

LLAMA7B = dict(hidden=4096, inter=11008)


def stack_shapes(layers: int, h: int, i: int) -> list[tuple[int, int]]:
    return [(h, h)] * 4 * layers + [(i, h), (i, h), (h, i)] * layers


def cases(device: torch.device, dtype: torch.dtype, stack_layers: int, blocks: list[int], shrink: int = 1):
    """(op, label, block, inputs, {impl: fn}) per benchmark case."""
    gen = torch.Generator(device=device).manual_seed(0)
    h, i = LLAMA7B["hidden"] // shrink, LLAMA7B["inter"] // shrink
    w = (torch.randn(h, i, device=device, generator=gen) * 0.02).to(dtype)
    on_cuda = device.type == "cuda"
    for b in blocks:
        impls = {"reference": lambda b=b: block_fake_quant_ref(w, 4, b)}
        if on_cuda:
            impls["triton"] = lambda b=b: block_fake_quant_triton(w, 4, b)
        yield "block_quant_int4", f"{h}x{i}", b, [w], impls
    stack = [(torch.randn(s, device=device, generator=gen) * 0.02).to(dtype) for s in stack_shapes(stack_layers, h, i)]
    impls = {"reference": lambda: [block_fake_quant_ref(m, 4, 16384) for m in stack]}
    if on_cuda:
        impls["triton"] = lambda: [block_fake_quant_triton(m, 4, 16384) for m in stack]
    yield "block_quant_int4", f"llama7b_stack_{stack_layers}L", 16384, stack, impls
    impls = {"reference": lambda: tensor_fake_quant_ref(w)}
    if on_cuda:
        impls["triton"] = lambda: tensor_fake_quant_triton(w)
    yield "tensor_quant_int8", f"{h}x{i}", 0, [w], impls
    for cols in (h, i):
        x = torch.randn(4096 // shrink, cols, device=device, generator=gen).to(dtype)
        x[0, 7] = 2000.0
        for outl in (None, [7]):
            impls = {"reference": lambda x=x, o=outl: token_fake_quant_ref(x, o)}
            if on_cuda:
                impls["triton"] = lambda x=x, o=outl: token_fake_quant_triton(x, o)
            yield "token_quant_int8" + ("_outlier" if outl else ""), f"{4096 // shrink}x{cols}", 0, [x], impls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default float16 on CUDA, float32 on CPU")
    ap.add_argument("--repeats", type=int, default=None, help="default 20 on CUDA, 3 on CPU")
    ap.add_argument("--stack-layers", type=int, default=None, help="default 32 on CUDA, 1 on CPU")
    ap.add_argument("--blocks", type=int, nargs="+", default=[64, 16384, 1048576])
    ap.add_argument("--shrink", type=int, default=1, help="divide every size by this (smoke tests)")
    ap.add_argument("--results", type=Path, default=Path("results"))
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("float16" if cuda else "float32"))
    repeats = args.repeats or (20 if cuda else 3)
    layers = args.stack_layers or (32 if cuda else 1)
    dev = device_name(device)
    rows = []
    for op, label, block, inputs, impls in cases(device, dtype, layers, args.blocks, args.shrink):
        outs = [torch.empty_like(t) for t in inputs]
        n_bytes = 2 * sum(t.numel() * t.element_size() for t in inputs)  # read once + write once
        methods = {"copy": lambda i=inputs, o=outs: [b.copy_(a) for a, b in zip(i, o, strict=True)], **impls}
        print(f"{op} {label} block={block} ({n_bytes / 2**30:.2f} GiB moved)", flush=True)
        times = time_interleaved(methods, repeats, device)
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        copy_bw = n_bytes / med["copy"]
        for impl, t in med.items():
            rows.append({"op": op, "shape": label, "block": block, "impl": impl,
                         "dtype": str(dtype).removeprefix("torch."), "median_s": t, "min_s": min(times[impl]),
                         "gbytes_per_s": n_bytes / t / 1e9,
                         "fraction_of_copy": (n_bytes / t) / copy_bw, "ratio_to_reference": t / med["reference"],
                         "repeats": repeats, "threads": torch.get_num_threads()})
            print(f"  {impl:<10} {t * 1e3:9.2f} ms  {n_bytes / t / 1e9:8.1f} GB/s"
                  f"  {(n_bytes / t) / copy_bw:6.1%} of copy")
        del outs
    writer = ResultsWriter(args.results, "bench", model="none", revision=None, dataset="random", seed=0, device=dev,
                           setting={**vars(args), "device": dev})

    def key(r):  # the device is part of the key: CPU and GPU runs keep their own rows
        return f"{dev}:{r['op']}:{r['shape']}:{r['block']}:{r['dtype']}"

    for cond in dict.fromkeys(map(key, rows)):
        sel = [r for r in rows if key(r) == cond]
        path = writer.write("kernels", sel, stage="bench_kernels", condition=cond)
    writer.commit({k: str(v) for k, v in vars(args).items()})
    print(f"wrote {path} ({dev})")


if __name__ == "__main__":
    main()
