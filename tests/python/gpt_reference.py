#!/usr/bin/python3
"""An independent FP64 implementation of ampd's GPT (engine/gpt.h), forward and
hand-written backward, in nothing but numpy, and the check of ampd's loss and gradients
against it.

Usage:
  gpt_reference.py DUMP.safetensors [...]   compare dumps of tests/engine/gpt_grad_dump
  gpt_reference.py --logits CKPT PROMPT     print a checkpoint's logits for a prompt (JSON)

The model, as nanoGPT's model.py (and ampd's engine/gpt.cc) defines it:
  x = wte[idx] + wpe[:T]
  per block: x += c_proj(attn(ln_1(x)));  x += mlp.c_proj(gelu(mlp.c_fc(ln_2(x))))
  attention: qkv = c_attn(h) split q | k | v, heads of D = C / n_head, S = q k^T / sqrt(D),
             causal softmax, y = P v, heads concatenated
  logits = ln_f(x) wte^T (lm_head tied), loss = mean over B*T of softmax cross-entropy
  LayerNorm: biased variance, eps 1e-5; GELU: exact, x * Phi(x) with erf.
The parameters are read from any ampd safetensors file with nanoGPT names (a checkpoint, or
a dump) by a small parser below; the shape of the model from its metadata "ampd.spec".

The comparison, per tensor: err = max |ampd - ref| / max |ref| (the loss: relative error).
Bounds (working precision: what ampd's activations and matmul operands are rounded to):
  fp32 (cpu and reference backends)   gradients 1e-4, loss 1e-5, logits 1e-4
  fp16                                gradients 3e-2, loss 5e-3, logits 1e-2
  bf16                                gradients 5e-2, loss 3e-2, logits 5e-2
Measured when this was written (tiny GPT of gpt_grad_dump: 2 layers, 2 heads, 16 wide,
8 positions, 11 tokens, batch 3, O(1) parameters), the worst gradient tensor per dump and
the loss's relative error:
  fp32 cpu                 1.1e-06 (h.0.ln_1.bias)         loss 1.1e-08
  fp32 reference backend   3.8e-07 (h.1.attn.c_attn.bias)  loss 1.1e-08
  fp32 cpu, bias-free      5.7e-07 (h.0.attn.c_proj.weight) loss 2.3e-08
  fp16 cpu                 4.9e-03 (h.0.ln_1.weight)       loss 2.2e-04
  bf16 cpu                 2.4e-02 (h.0.ln_2.weight)       loss 2.5e-03
The reference itself is cross-checked against torch autograd (FP64, the same parameters and
tokens; torch's own layer_norm, gelu, softmax and cross_entropy) where torch is importable:
gradients agree to 1e-10 relative (measured 1.6e-15, torch 2.15 CPU). Without torch that part is reported as skipped.

Exit status: 0 all within bounds, 1 a mismatch, 77 numpy missing (ctest: skipped).
"""

import json
import math
import struct
import sys

try:
    import numpy as np
except ImportError:
    print("SKIP: numpy is not importable by", sys.executable)
    sys.exit(77)

# ---- safetensors, by hand ------------------------------------------------------------------

_DTYPES = {"F32": "<f4", "F16": "<f2", "I32": "<i4", "U8": "u1", "F64": "<f8", "I64": "<i8"}


def load_safetensors(path):
    """-> (name -> numpy array (BF16 widened to float32), metadata dict)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    buf = raw[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        shape = tuple(info["shape"])
        if info["dtype"] == "BF16":
            bits = np.frombuffer(buf[b:e], dtype="<u2").astype(np.uint32) << 16
            a = bits.view(np.float32)
        else:
            a = np.frombuffer(buf[b:e], dtype=_DTYPES[info["dtype"]])
        out[name] = a.reshape(shape).copy()
    return out, meta


def gpt_config(meta, tensors):
    """The gpt's shape from metadata ampd.spec (defaults as engine/gpt.cc resolves them)."""
    spec = json.loads(meta["ampd.spec"])
    g = spec["model"]["gpt"]
    C = int(g["n_embd"])
    V = tensors["transformer.wte.weight"].size // C
    return {
        "n_layer": int(g["n_layer"]),
        "n_head": int(g["n_head"]),
        "n_embd": C,
        "block_size": int(g["block_size"]),
        "bias": bool(g.get("bias", True)),
        "vocab_size": V,
    }


def gpt_params(tensors, cfg):
    """nanoGPT-named FP64 parameters; absent biases (bias: false) are None. Linear weights
    stay (out, in) as nn.Linear (and ampd) store them."""
    C, T, V = cfg["n_embd"], cfg["block_size"], cfg["vocab_size"]
    P = {}

    def get(name, shape, optional=False):
        if name not in tensors:
            if optional and not cfg["bias"]:
                return None
            raise KeyError("no tensor " + name)
        return tensors[name].astype(np.float64).reshape(shape)

    P["transformer.wte.weight"] = get("transformer.wte.weight", (V, C))
    P["transformer.wpe.weight"] = get("transformer.wpe.weight", (T, C))
    for i in range(cfg["n_layer"]):
        h = "transformer.h.%d." % i
        for name, shape in (("ln_1", (C,)), ("ln_2", (C,))):
            P[h + name + ".weight"] = get(h + name + ".weight", shape)
            P[h + name + ".bias"] = get(h + name + ".bias", shape, True)
        for name, out_f, in_f in (("attn.c_attn", 3 * C, C), ("attn.c_proj", C, C),
                                  ("mlp.c_fc", 4 * C, C), ("mlp.c_proj", C, 4 * C)):
            P[h + name + ".weight"] = get(h + name + ".weight", (out_f, in_f))
            P[h + name + ".bias"] = get(h + name + ".bias", (out_f,), True)
    P["transformer.ln_f.weight"] = get("transformer.ln_f.weight", (C,))
    P["transformer.ln_f.bias"] = get("transformer.ln_f.bias", (C,), True)
    return P


# ---- the model, forward and backward in FP64 -----------------------------------------------

EPS = 1e-5
_erf = np.vectorize(math.erf, otypes=[np.float64])


def ln_forward(x, w, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + EPS)
    xhat = (x - mu) * rstd
    y = xhat * w + (b if b is not None else 0.0)
    return y, (xhat, rstd, w)


def ln_backward(dy, cache):
    xhat, rstd, w = cache
    dw = (dy * xhat).reshape(-1, xhat.shape[-1]).sum(0)
    db = dy.reshape(-1, xhat.shape[-1]).sum(0)
    dxhat = dy * w
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx, dw, db


def linear_forward(x, w, b):
    y = x @ w.T
    return y + b if b is not None else y


def linear_backward(dy, x, w):
    """-> dx, dW (out, in), db."""
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    return dy @ w, dy2.T @ x2, dy2.sum(0)


def gelu_forward(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_backward(dy, x):
    cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return dy * (cdf + x * pdf)


def attn_forward(h, P, pre, cfg):
    B, T, C = h.shape
    H = cfg["n_head"]
    D = C // H
    qkv = linear_forward(h, P[pre + "c_attn.weight"], P[pre + "c_attn.bias"])
    q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, T, H, D).transpose(0, 2, 1, 3)
               for i in range(3))
    scale = 1.0 / math.sqrt(D)
    s = (q @ k.transpose(0, 1, 3, 2)) * scale
    mask = np.tril(np.ones((T, T), dtype=bool))
    s = np.where(mask, s, -np.inf)
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    yh = (p @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
    y = linear_forward(yh, P[pre + "c_proj.weight"], P[pre + "c_proj.bias"])
    return y, (h, q, k, v, p, yh, scale)


def attn_backward(dy, cache, P, pre, cfg, G):
    h, q, k, v, p, yh, scale = cache
    B, T, C = h.shape
    H = cfg["n_head"]
    D = C // H
    dyh, G[pre + "c_proj.weight"], dbp = linear_backward(dy, yh, P[pre + "c_proj.weight"])
    if P[pre + "c_proj.bias"] is not None:
        G[pre + "c_proj.bias"] = dbp
    dyh = dyh.reshape(B, T, H, D).transpose(0, 2, 1, 3)
    dp = dyh @ v.transpose(0, 1, 3, 2)
    dv = p.transpose(0, 1, 3, 2) @ dyh
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))  # masked entries: p = 0
    dq = (ds @ k) * scale
    dk = (ds.transpose(0, 1, 3, 2) @ q) * scale
    dqkv = np.concatenate([t.transpose(0, 2, 1, 3).reshape(B, T, C) for t in (dq, dk, dv)], -1)
    dh, G[pre + "c_attn.weight"], dba = linear_backward(dqkv, h, P[pre + "c_attn.weight"])
    if P[pre + "c_attn.bias"] is not None:
        G[pre + "c_attn.bias"] = dba
    return dh


def forward(P, cfg, idx):
    """-> logits (B, T, V), caches."""
    B, T = idx.shape
    x = P["transformer.wte.weight"][idx] + P["transformer.wpe.weight"][:T]
    caches = []
    for i in range(cfg["n_layer"]):
        h = "transformer.h.%d." % i
        a_in, ln1 = ln_forward(x, P[h + "ln_1.weight"], P[h + "ln_1.bias"])
        a, att = attn_forward(a_in, P, h + "attn.", cfg)
        x = x + a
        m_in, ln2 = ln_forward(x, P[h + "ln_2.weight"], P[h + "ln_2.bias"])
        f = linear_forward(m_in, P[h + "mlp.c_fc.weight"], P[h + "mlp.c_fc.bias"])
        g = gelu_forward(f)
        m = linear_forward(g, P[h + "mlp.c_proj.weight"], P[h + "mlp.c_proj.bias"])
        x = x + m
        caches.append((ln1, att, ln2, m_in, f, g))
    xf, lnf = ln_forward(x, P["transformer.ln_f.weight"], P["transformer.ln_f.bias"])
    logits = xf @ P["transformer.wte.weight"].T
    return logits, (idx, caches, xf, lnf)


def loss_and_grads(P, cfg, idx, labels):
    """-> (mean cross-entropy, per-row losses, logits, gradients by parameter name)."""
    logits, (idx, caches, xf, lnf) = forward(P, cfg, idx)
    B, T, V = logits.shape
    N = B * T
    z = logits.reshape(N, V)
    zmax = z.max(-1, keepdims=True)
    lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(-1))
    y = labels.reshape(N)
    rows = lse - z[np.arange(N), y]
    loss = rows.mean()

    G = {}
    dz = np.exp(z - lse[:, None])
    dz[np.arange(N), y] -= 1.0
    dz /= N
    dz = dz.reshape(B, T, V)
    wte = P["transformer.wte.weight"]
    dxf = dz @ wte
    G["transformer.wte.weight"] = dz.reshape(N, V).T @ xf.reshape(N, -1)  # lm_head (tied)
    dx, G["transformer.ln_f.weight"], db = ln_backward(dxf, lnf)
    if P["transformer.ln_f.bias"] is not None:
        G["transformer.ln_f.bias"] = db
    for i in reversed(range(cfg["n_layer"])):
        h = "transformer.h.%d." % i
        ln1, att, ln2, m_in, f, g = caches[i]
        dg, G[h + "mlp.c_proj.weight"], db = linear_backward(dx, g, P[h + "mlp.c_proj.weight"])
        if P[h + "mlp.c_proj.bias"] is not None:
            G[h + "mlp.c_proj.bias"] = db
        df = gelu_backward(dg, f)
        dm_in, G[h + "mlp.c_fc.weight"], db = linear_backward(df, m_in, P[h + "mlp.c_fc.weight"])
        if P[h + "mlp.c_fc.bias"] is not None:
            G[h + "mlp.c_fc.bias"] = db
        d, G[h + "ln_2.weight"], db = ln_backward(dm_in, ln2)
        if P[h + "ln_2.bias"] is not None:
            G[h + "ln_2.bias"] = db
        dx = dx + d
        da_in = attn_backward(dx, att, P, h + "attn.", cfg, G)
        d, G[h + "ln_1.weight"], db = ln_backward(da_in, ln1)
        if P[h + "ln_1.bias"] is not None:
            G[h + "ln_1.bias"] = db
        dx = dx + d
    G["transformer.wpe.weight"] = np.zeros_like(P["transformer.wpe.weight"])
    G["transformer.wpe.weight"][:T] = dx.sum(0)
    np.add.at(G["transformer.wte.weight"], idx.reshape(-1), dx.reshape(N, -1))
    return loss, rows.reshape(B, T), logits, G


# ---- torch autograd cross-check of the reference -------------------------------------------

def torch_check(P, cfg, idx, labels, ref_loss, ref_grads):
    """Max relative gradient difference between torch autograd (FP64) and the numpy
    backward, or None when torch is not importable."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
          for k, v in P.items() if v is not None}
    opt = lambda k: tp.get(k)  # noqa: E731
    C, H = cfg["n_embd"], cfg["n_head"]
    D = C // H
    B, T = idx.shape
    ti = torch.tensor(idx, dtype=torch.long)
    x = F.embedding(ti, tp["transformer.wte.weight"]) + tp["transformer.wpe.weight"][:T]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(cfg["n_layer"]):
        h = "transformer.h.%d." % i
        a = F.layer_norm(x, (C,), tp[h + "ln_1.weight"], opt(h + "ln_1.bias"), EPS)
        qkv = F.linear(a, tp[h + "attn.c_attn.weight"], opt(h + "attn.c_attn.bias"))
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(C, dim=2))
        s = (q @ k.transpose(-2, -1)) / math.sqrt(D)
        p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
        yh = (p @ v).transpose(1, 2).reshape(B, T, C)
        x = x + F.linear(yh, tp[h + "attn.c_proj.weight"], opt(h + "attn.c_proj.bias"))
        m = F.layer_norm(x, (C,), tp[h + "ln_2.weight"], opt(h + "ln_2.bias"), EPS)
        m = F.gelu(F.linear(m, tp[h + "mlp.c_fc.weight"], opt(h + "mlp.c_fc.bias")))
        x = x + F.linear(m, tp[h + "mlp.c_proj.weight"], opt(h + "mlp.c_proj.bias"))
    x = F.layer_norm(x, (C,), tp["transformer.ln_f.weight"], opt("transformer.ln_f.bias"), EPS)
    logits = x @ tp["transformer.wte.weight"].T
    loss = F.cross_entropy(logits.reshape(B * T, -1), torch.tensor(labels.reshape(-1),
                                                                    dtype=torch.long))
    loss.backward()
    worst = abs(loss.item() - ref_loss) / abs(ref_loss)
    for k, t in tp.items():
        g = t.grad.numpy()
        worst = max(worst, np.abs(g - ref_grads[k]).max() / max(np.abs(g).max(), 1e-300))
    return worst


# ---- the comparison ------------------------------------------------------------------------

BOUNDS = {  # precision -> (gradients, loss, logits)
    "fp32": (1e-4, 1e-5, 1e-4),
    "fp16": (3e-2, 5e-3, 1e-2),
    "bf16": (5e-2, 3e-2, 5e-2),
}
TORCH_BOUND = 1e-10


def rel(a, ref):
    return float(np.abs(a.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-300))


def check_dump(path):
    t, meta = load_safetensors(path)
    cfg = gpt_config(meta, t)
    P = gpt_params(t, cfg)
    idx = t["tokens"].astype(np.int64)
    labels = t["labels"].astype(np.int64)
    loss, rows, logits, G = loss_and_grads(P, cfg, idx, labels)
    prec = meta.get("ampd.precision", "fp32")
    g_bound, l_bound, z_bound = BOUNDS[prec]
    label = "%s (%s, %s%s)" % (path.rsplit("/", 1)[-1], prec, meta.get("ampd.backend", "?"),
                               "" if cfg["bias"] else ", no bias")
    ok = True
    loss_err = abs(float(t["loss"]) - loss) / abs(loss)
    logit_err = rel(t["logits"], logits)
    row_err = rel(t["loss_rows"], rows)
    errs = {}
    for name, ref in G.items():
        key = "grad." + name
        if key not in t:
            print("FAIL %s: no %s" % (label, key))
            ok = False
            continue
        errs[name] = rel(t[key].reshape(ref.shape), ref)
    expected = {k for k in t if k.startswith("grad.")}
    extra = expected - {"grad." + k for k in G}
    if extra:
        print("FAIL %s: ampd has gradients the reference does not: %s" % (label, sorted(extra)))
        ok = False
    worst_name = max(errs, key=errs.get)
    print("%s: loss %.6f (ref %.6f, rel %.1e <= %.0e), logits %.1e <= %.0e, loss rows %.1e, "
          "%d gradients, worst %.1e (%s) <= %.0e"
          % (label, float(t["loss"]), loss, loss_err, l_bound, logit_err, z_bound, row_err,
             len(errs), errs[worst_name], worst_name, g_bound))
    if loss_err > l_bound or logit_err > z_bound or row_err > z_bound:
        print("FAIL %s: loss or logits out of bounds" % label)
        ok = False
    for name, e in sorted(errs.items()):
        if not e <= g_bound:
            print("FAIL %s: gradient %s: rel %.2e > %.0e" % (label, name, e, g_bound))
            ok = False
    tc = torch_check(P, cfg, idx, labels, loss, G)
    if tc is None:
        print("  torch autograd cross-check of the reference: skipped (torch not importable)")
    else:
        print("  torch autograd cross-check of the reference: rel %.1e <= %.0e" % (tc, TORCH_BOUND))
        if not tc <= TORCH_BOUND:
            print("FAIL %s: the numpy reference disagrees with torch autograd" % label)
            ok = False
    return ok


def checkpoint_logits(path, prompt):
    """The FP64 reference's logits for `prompt` under a checkpoint (chars vocabularies)."""
    t, meta = load_safetensors(path)
    cfg = gpt_config(meta, t)
    P = gpt_params(t, cfg)
    vocab = meta["ampd.vocabulary"]
    if vocab == "bytes":
        ids = list(prompt.encode("latin-1"))
    else:
        symbols = vocab[len("chars:"):]
        ids = [symbols.index(c) for c in prompt]
    logits, _ = forward(P, cfg, np.array([ids], dtype=np.int64))
    return logits[0]


def main(argv):
    if len(argv) == 4 and argv[1] == "--logits":
        print(json.dumps(checkpoint_logits(argv[2], argv[3]).tolist()))
        return 0
    if len(argv) < 2 or argv[1].startswith("-"):
        print(__doc__)
        return 2
    ok = True
    for path in argv[1:]:
        ok = check_dump(path) and ok
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
