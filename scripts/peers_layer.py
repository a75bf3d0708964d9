"""PyTorch peer of ffkern's OneForecast gated-layer bench (`ffkern bench --op graph` on a GPU).

The same layer as ffkern's f64 reference (SPEC §6, src/ops/graph/cpu.rs: edge MLP on
[e; h_src; h_dst], LayerNorm, scalar gate, per-head softmax attention over each node's in-edges,
node MLP on [a; h], LayerNorm, residuals) written the way a PyTorch user would: concatenations,
matmuls, scatter_reduce/index_add_ for the per-node softmax and sum, autograd for the backward.
Timed forward+backward on a mesh of ffkern's bench size (icosphere level 5 has 10,242 nodes with
6 in-edges each, 12 with 5; here every node gets 6 in-edges from random sources), D 512, 4 heads,
hidden widths 64.

usage: python3 scripts/peers_layer.py [--json out.json]      (needs a CUDA GPU and PyTorch)
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F

dev = "cuda"


def timeit(fn, reps=10, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def params(d, heads, gh, ah, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)

    def w(out, inp):
        return (torch.randn(out, inp, generator=g) / inp**0.5).to(dev, dtype).requires_grad_()

    def v(n, fill=None):
        t = torch.full((n,), fill) if fill is not None else 0.1 * torch.randn(n, generator=g)
        return t.to(dev, dtype).requires_grad_()

    return dict(
        w1=w(d, 3 * d), b1=v(d), w_b=w(d, d), b_b=v(d), ln_e_g=v(d, 1.0), ln_e_b=v(d, 0.0),
        wg1=w(gh, 3 * d), b_g1=v(gh), w_g2=w(3 * heads, gh), b_g2=v(3 * heads),
        w_a1=w(ah, d), b_a1=v(ah), w_a2=w(heads, ah), b_a2=v(heads),
        w_n1=w(d, 2 * d), b_n1=v(d), w_n2=w(d, d), b_n2=v(d), ln_n_g=v(d, 1.0), ln_n_b=v(d, 0.0),
    )


def layer(e, h, src, dst, p, heads, eps=1e-5):
    n, d = h.shape
    cat = torch.cat([e, h[src], h[dst]], 1)
    u = F.silu(cat @ p["w1"].T + p["b1"])
    m = F.layer_norm(u @ p["w_b"].T + p["b_b"], (d,), p["ln_e_g"], p["ln_e_b"], eps)
    q = F.silu(cat @ p["wg1"].T + p["b_g1"])
    gate = torch.sigmoid(q @ p["w_g2"].T + p["b_g2"]).mean(1, keepdim=True)
    e2 = gate * m + e
    r = F.silu(e2 @ p["w_a1"].T + p["b_a1"])
    s = r @ p["w_a2"].T + p["b_a2"]
    # Softmax over each node's in-edges per head (the max is a constant shift: no gradient).
    idx = dst[:, None].expand(-1, heads)
    mx = torch.full((n, heads), float("-inf"), device=dev, dtype=s.dtype).scatter_reduce(0, idx, s.detach(), "amax")
    ex = torch.exp(s - mx[dst])
    den = torch.zeros(n, heads, device=dev, dtype=s.dtype).index_add(0, dst, ex)
    alpha = ex / den[dst]
    agg = torch.zeros(n, d, device=dev, dtype=e2.dtype).index_add(0, dst, alpha.repeat_interleave(d // heads, 1) * e2)
    t1 = F.silu(torch.cat([agg, h], 1) @ p["w_n1"].T + p["b_n1"])
    y = F.layer_norm(t1 @ p["w_n2"].T + p["b_n2"], (d,), p["ln_n_g"], p["ln_n_b"], eps)
    return e2, y + h


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    n, deg, d, heads, gh, ah = 10242, 6, 512, 4, 64, 64
    g = torch.Generator(device="cpu").manual_seed(1)
    dst = torch.arange(n).repeat_interleave(deg).to(dev)
    src = torch.randint(0, n, (n * deg,), generator=g).to(dev)
    E = n * deg
    records = []
    for dtype in (torch.float32, torch.bfloat16):
        p = params(d, heads, gh, ah, dtype)
        e = torch.randn(E, d, device=dev, dtype=dtype, requires_grad=True)
        h = torch.randn(n, d, device=dev, dtype=dtype, requires_grad=True)
        de, dh = torch.randn_like(e), torch.randn_like(h)
        inputs = list(p.values()) + [e, h]

        def fwd_bwd():
            e2, h2 = layer(e, h, src, dst, p, heads)
            torch.autograd.grad([e2, h2], inputs, [de, dh])

        with torch.no_grad():
            fwd_ms = timeit(lambda: layer(e, h, src, dst, p, heads))
        ms = timeit(fwd_bwd)
        shape = f"N{n} E{E} D{d} H{heads}"
        name = str(dtype).replace("torch.", "")
        for workload, t in (("oneforecast_layer_fwd", fwd_ms), ("oneforecast_layer_fwd_bwd", ms)):
            records.append(dict(workload=workload, shape=shape, dtype=name, median_ms=round(t, 4), impl="torch eager (index_add)"))
            print(f"{workload:28s} {shape:34s} {name:9s} {t:9.3f} ms  [torch eager (index_add)]", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
