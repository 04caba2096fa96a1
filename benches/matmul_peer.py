"""PyTorch's matrix products and causal attention on the shapes of `tsukuru bench matmul`, as JSON
lines: on the CPU the benchmark model's (benches/matmul.sh), on a GPU the reference's GPT-2-small
step (benches/gpu.sh). Each repetition is timed to the end of its device work."""
import argparse
import json
import time

import torch

p = argparse.ArgumentParser()
p.add_argument("--repeat", type=int, default=9)
p.add_argument("--threads", type=int, default=0)
p.add_argument("--device", default="cpu")
p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
a = p.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)
dev, dtype = torch.device(a.device), getattr(torch, a.dtype)
gpu = dev.type == "cuda"


def median(f):
    for _ in range(2):
        f()
    ts = []
    for _ in range(a.repeat):
        t = time.perf_counter()
        f()
        if gpu:
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


def out(shape, flops, secs):
    print(json.dumps(dict(bench="matmul", impl="pytorch", shape=shape, dtype=a.dtype, device=a.device,
                          seconds=secs, gflops=flops / secs / 1e9)), flush=True)


products = [(32768, 768, 768, 0, 1), (32768, 768, 4096, 0, 1), (32768, 2048, 768, 0, 1), (32768, 768, 768, 0, 0),
            (768, 32768, 768, 1, 0), (4096, 768, 32768, 0, 1)] if gpu else \
           [(2048, 384, 1024, 0, 0), (2048, 1024, 384, 0, 0), (2048, 384, 8192, 0, 0), (2048, 384, 1024, 0, 1),
            (384, 2048, 1024, 1, 0)]
randn = lambda *shape, **kw: torch.randn(*shape, device=dev, dtype=dtype, **kw)
for m, k, n, ta, tb in products:
    x = randn((k, m) if ta else (m, k))
    y = randn((n, k) if tb else (k, n))
    secs = median(lambda: (x.t() if ta else x) @ (y.t() if tb else y))
    out(f"{m}x{k}x{n}{' aT' if ta else ''}{' bT' if tb else ''}", 2 * m * k * n, secs)
b, h, t = (32, 12, 1024) if gpu else (8, 6, 256)
q, k, v = (randn(b, h, t, 64, requires_grad=True) for _ in range(3))
g = randn(b, h, t, 64)
flops = 4 * b * h * t * t * 64
attend = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
with torch.no_grad():
    out(f"causal attention {b}x{h}x{t}x64 fwd", flops, median(attend))
out(f"causal attention {b}x{h}x{t}x64 fwd+bwd", 3 * flops, median(lambda: attend().backward(g)))
