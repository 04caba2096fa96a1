"""PyTorch's matrix products on the shapes of `tsukuru bench matmul`, as JSON lines (benches/matmul.sh)."""
import json
import sys
import time

import torch

repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 9
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 0
if threads:
    torch.set_num_threads(threads)


def median(f):
    for _ in range(2):
        f()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


def out(shape, flops, secs):
    print(json.dumps(dict(bench="matmul", impl="pytorch", shape=shape, seconds=secs, gflops=flops / secs / 1e9)))


for m, k, n, ta, tb in [(2048, 384, 1024, 0, 0), (2048, 1024, 384, 0, 0), (2048, 384, 8192, 0, 0),
                        (2048, 384, 1024, 0, 1), (384, 2048, 1024, 1, 0)]:
    x = torch.randn((k, m) if ta else (m, k))
    y = torch.randn((n, k) if tb else (k, n))
    secs = median(lambda: (x.t() if ta else x) @ (y.t() if tb else y))
    out(f"{m}x{k}x{n}{' aT' if ta else ''}{' bT' if tb else ''}", 2 * m * k * n, secs)
q, k, v = (torch.randn(8, 6, 256, 64, requires_grad=True) for _ in range(3))
g = torch.randn(8, 6, 256, 64)
flops = 4 * 48 * 256 * 256 * 64
attend = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
with torch.no_grad():
    out("causal attention 8x6x256x64 fwd", flops, median(attend))
out("causal attention 8x6x256x64 fwd+bwd", 3 * flops, median(lambda: attend().backward(g)))
