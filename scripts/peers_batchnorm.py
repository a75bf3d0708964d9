"""PyTorch peer of ffkern's BatchNorm bench rows (`ffkern bench --op repavit` on a GPU).

BatchNorm over tokens in training, as the RePaViT training form uses it: batch statistics and the
running update, then the backward (dx, dγ, dβ), at the bench's shape (ViT-L: 25,216 tokens =
128 images × 197, BN1 over C = 1024, BN2 over H = 4096), through torch.nn.functional.batch_norm
on [tokens, channels] (cuDNN or PyTorch's own kernels, whichever it picks).

usage: python3 scripts/peers_batchnorm.py [--json out.json]      (needs a CUDA GPU and PyTorch)
"""
import argparse
import json

import torch
import torch.nn.functional as F

# The same CUDA-event timing (warm-up, median) as the OneForecast layer's peer.
from peers_layer import dev, timeit


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    tokens = 128 * 197
    g = torch.Generator(device="cpu").manual_seed(2)
    records = []
    for channels in (1024, 4096):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(tokens, channels, generator=g).to(dev, dtype).requires_grad_(True)
            dy = torch.randn(tokens, channels, generator=g).to(dev, dtype)
            gamma = torch.rand(channels, generator=g).add_(0.5).to(dev).requires_grad_(True)
            beta = torch.randn(channels, generator=g).to(dev).requires_grad_(True)
            rm, rv = torch.zeros(channels, device=dev), torch.ones(channels, device=dev)

            def fwd_bwd():
                y = F.batch_norm(x, rm, rv, gamma, beta, training=True, momentum=0.1, eps=1e-5)
                torch.autograd.grad([y], [x, gamma, beta], [dy])

            ms = timeit(fwd_bwd, reps=20)
            shape = f"train fwd+bwd R{tokens} C{channels}"
            name = str(dtype).replace("torch.", "")
            records.append(dict(workload="batchnorm", shape=shape, dtype=name, median_ms=round(ms, 4), impl="torch F.batch_norm"))
            print(f"{'batchnorm':10s} {shape:34s} {name:9s} {ms:9.3f} ms  [torch F.batch_norm]", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
