"""Writes crates/model/tests/fixtures/torch_parity.json: logits, loss and every gradient of
tsukuru's transformer computed by an independent PyTorch implementation on the same weights, and
the loss curves of a few AdamW steps on the first variant in float32 and under bf16 autocast.

The weights are not stored: both sides compute them from one formula (`weight` below, mirrored in
crates/model/tests/torch_parity.rs), in float64 and rounded to float32. Run through
scripts/torch_parity.sh, which provides PyTorch.
"""
import json
import math
import sys

import torch

torch.set_default_dtype(torch.float32)

VARIANTS = [
    # Multi-head attention, untied output, SwiGLU: the default preset's shape in miniature.
    dict(vocab_size=24, d_model=16, n_layers=2, n_heads=2, n_kv_heads=2, ffn_dim=24,
         activation="swiglu", qk_norm=False, tie_embeddings=False),
    # Grouped-query attention with QK-norm (Qwen3-like) and tied embeddings.
    dict(vocab_size=24, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=24,
         activation="swiglu", qk_norm=True, tie_embeddings=True),
    # Squared-ReLU feed-forward (Primer, nanochat).
    dict(vocab_size=24, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=32,
         activation="relu2", qk_norm=False, tie_embeddings=False),
]
COMMON = dict(norm_eps=1e-5, rope_theta=10000.0, max_seq_len=16)
BATCH, SEQ = 2, 7


def param_specs(c):
    """(name, shape) in tsukuru's parameter order (model::init::param_specs)."""
    d, hd, f = c["d_model"], c["d_model"] // c["n_heads"], c["ffn_dim"]
    specs = [("model.embed_tokens.weight", (c["vocab_size"], d))]
    for i in range(c["n_layers"]):
        p = f"model.layers.{i}."
        specs += [(p + "input_layernorm.weight", (d,)),
                  (p + "self_attn.q_proj.weight", (c["n_heads"] * hd, d)),
                  (p + "self_attn.k_proj.weight", (c["n_kv_heads"] * hd, d)),
                  (p + "self_attn.v_proj.weight", (c["n_kv_heads"] * hd, d)),
                  (p + "self_attn.o_proj.weight", (d, c["n_heads"] * hd))]
        if c["qk_norm"]:
            specs += [(p + "self_attn.q_norm.weight", (hd,)), (p + "self_attn.k_norm.weight", (hd,))]
        specs.append((p + "post_attention_layernorm.weight", (d,)))
        if c["activation"] == "swiglu":
            specs.append((p + "mlp.gate_proj.weight", (f, d)))
        specs += [(p + "mlp.up_proj.weight", (f, d)), (p + "mlp.down_proj.weight", (d, f))]
    specs.append(("model.norm.weight", (d,)))
    if not c["tie_embeddings"]:
        specs.append(("lm_head.weight", (c["vocab_size"], d)))
    return specs


def weight(p, shape):
    """Parameter number p: gains near 1 for norms, ±1/√fan_in for matrices (embeddings ±1)."""
    n = math.prod(shape)
    wave = [math.sin((i + 1) * 0.7548776662 + (p + 1) * 2.399963) for i in range(n)]
    if len(shape) == 1:
        vals = [1.0 + 0.25 * w for w in wave]
    else:
        amp = 1.0 if p == 0 else 1.0 / math.sqrt(shape[1])
        vals = [amp * w for w in wave]
    return torch.tensor(vals, dtype=torch.float64).to(torch.float32).reshape(shape)


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, c):
    """Half-split rotary embedding of x (B, H, T, hd) at positions 0..T."""
    t, hd = x.shape[2], x.shape[3]
    half = hd // 2
    freq = torch.tensor([1.0 / c["rope_theta"] ** (2.0 * i / hd) for i in range(half)], dtype=torch.float64)
    ang = torch.arange(t, dtype=torch.float64)[:, None] * freq[None, :]
    cos, sin = ang.cos().float(), ang.sin().float()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def forward(c, w, ids):
    b, t = ids.shape
    hd = c["d_model"] // c["n_heads"]
    eps = c["norm_eps"]
    x = w["model.embed_tokens.weight"][ids]
    mask = torch.full((t, t), float("-inf")).triu(1)
    for i in range(c["n_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(b, t, c["n_heads"], hd).transpose(1, 2)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(b, t, c["n_kv_heads"], hd).transpose(1, 2)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(b, t, c["n_kv_heads"], hd).transpose(1, 2)
        if c["qk_norm"]:
            q = rms_norm(q, w[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, w[p + "self_attn.k_norm.weight"], eps)
        q, k = rope(q, c), rope(k, c)
        groups = c["n_heads"] // c["n_kv_heads"]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        att = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(hd) + mask, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c["d_model"])
        x = x + y @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        up = h @ w[p + "mlp.up_proj.weight"].T
        if c["activation"] == "swiglu":
            hidden = torch.nn.functional.silu(h @ w[p + "mlp.gate_proj.weight"].T) * up
        else:
            hidden = torch.relu(up).pow(2)
        x = x + hidden @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if c["tie_embeddings"] else w["lm_head.weight"]
    return x @ head.T


def rounded(t):
    return [float(f"{v:.6g}") for v in t.detach().flatten().tolist()]


variants = []
for v in VARIANTS:
    c = {**v, **COMMON}
    w = {name: weight(p, shape).requires_grad_() for p, (name, shape) in enumerate(param_specs(c))}
    n = BATCH * SEQ
    ids = torch.tensor([(i * 7 + 3) % c["vocab_size"] for i in range(n)]).view(BATCH, SEQ)
    targets = torch.tensor([(i * 11 + 5) % c["vocab_size"] for i in range(n)])
    logits = forward(c, w, ids)
    loss = torch.nn.functional.cross_entropy(logits.view(n, -1), targets)
    loss.backward()
    variants.append(dict(config=c, batch=BATCH, seq=SEQ, inputs=ids.flatten().tolist(), targets=targets.tolist(),
                         loss=loss.item(), logits=rounded(logits),
                         grads={name: rounded(t.grad) for name, t in w.items()}))


def curve(c, ids, targets, autocast):
    """Losses of CURVE_STEPS AdamW steps on one batch, from the formula weights, in float32 or
    with matrix products in bf16 under autocast (the loss in float32 either way)."""
    w = {name: weight(p, shape).requires_grad_() for p, (name, shape) in enumerate(param_specs(c))}
    opt = torch.optim.AdamW(list(w.values()), lr=CURVE_LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    losses = []
    for _ in range(CURVE_STEPS):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = forward(c, w, ids)
        loss = torch.nn.functional.cross_entropy(logits.float().view(ids.numel(), -1), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


CURVE_STEPS, CURVE_LR = 30, 5e-3
first = variants[0]
c0 = first["config"]
ids0 = torch.tensor(first["inputs"]).view(BATCH, SEQ)
t0 = torch.tensor(first["targets"])
curves = dict(steps=CURVE_STEPS, lr=CURVE_LR, float32=curve(c0, ids0, t0, False), bfloat16=curve(c0, ids0, t0, True))
json.dump(dict(made_by="scripts/torch_parity.py", torch=torch.__version__, variants=variants, curves=curves),
          sys.stdout, separators=(",", ":"))
sys.stdout.write("\n")
