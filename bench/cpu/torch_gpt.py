"""PyTorch side of `make bench` for the character-level GPT (`ampd_bench gpt_steps/gpt_train`).

A compact GPT-2 equivalent to nanoGPT's model.py with the configuration of
examples/shakespeare-char-*.yaml (nanoGPT's shakespeare_char CPU settings): token + position
embedding, pre-LN blocks (LayerNorm with bias, causal self-attention through
F.scaled_dot_product_attention(is_causal=True), MLP 4C with exact GELU), final LayerNorm,
lm_head tied to the token embedding; init N(0, 0.02), residual projections
N(0, 0.02 / sqrt(2 n_layer)). bias=True and dropout 0, as the ampd examples (nanoGPT's
train.py defaults to bias=False; its GPTConfig to True).
Training: AdamW(lr 1e-3, betas (0.9, 0.99), weight decay 0.1 on the >= 2-D parameters only,
fused=False), gradient clipping at 1.0, warm-up 100 then cosine to 0.1 x lr over max_iters,
written as ampd's LrSchedule (warm-up peak * (i + 1) / 100; nanoGPT divides by 101).
Data: the same Tiny Shakespeare (examples/data/tinyshakespeare.txt.gz), sorted-char
vocabulary, first 90% train, last 10% validation, random windows (torch.randint).
Precision: fp32; bf16 = torch.autocast("cpu", dtype=torch.bfloat16) around forward + loss.

  torch_gpt.py mode=steps precision=fp32,bf16 steps=50 warmup=10 threads=2
      One JSON line per precision: median / min ms per training step (batch drawn, forward,
      backward, clip, AdamW, loss read on the host).
  torch_gpt.py mode=train precision=fp32 iters=2000 eval_batches=200 threads=2
      Trains max_iters and prints the final train and validation loss (mean over
      eval_batches random validation batches), and the wall time.

Other configurations (bench/gpu/engine_check.sh, the GPU example): device=cuda,
n_layer= n_head= n_embd= block_size= batch= dropout= (dropout on the embeddings, the
attention probabilities and both residual branches, as nanoGPT). On cuda, bf16 and fp16 are
torch.autocast("cuda") (fp16 with a GradScaler), and each step's loss read synchronizes.
"""
import gzip
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_LAYER, N_HEAD, N_EMBD, BLOCK, BATCH, DROPOUT = 4, 4, 128, 64, 12, 0.0
DEVICE = "cpu"
LR, MIN_LR_RATIO, WARMUP, WD, BETAS, CLIP = 1e-3, 0.1, 100, 0.1, (0.9, 0.99), 1.0


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = nn.Linear(N_EMBD, 3 * N_EMBD)
        self.c_proj = nn.Linear(N_EMBD, N_EMBD)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, N_HEAD, C // N_HEAD).transpose(1, 2)
        k = k.view(B, T, N_HEAD, C // N_HEAD).transpose(1, 2)
        v = v.view(B, T, N_HEAD, C // N_HEAD).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                           dropout_p=DROPOUT if self.training else 0.0,
                                           is_causal=True)
        return F.dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)), DROPOUT,
                         self.training)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(N_EMBD)
        self.attn = SelfAttention()
        self.ln_2 = nn.LayerNorm(N_EMBD)
        self.c_fc = nn.Linear(N_EMBD, 4 * N_EMBD)
        self.c_proj = nn.Linear(4 * N_EMBD, N_EMBD)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + F.dropout(self.c_proj(F.gelu(self.c_fc(self.ln_2(x)))), DROPOUT, self.training)


class GPT(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.wte = nn.Embedding(vocab, N_EMBD)
        self.wpe = nn.Embedding(BLOCK, N_EMBD)
        self.h = nn.ModuleList(Block() for _ in range(N_LAYER))
        self.ln_f = nn.LayerNorm(N_EMBD)
        self.lm_head = nn.Linear(N_EMBD, vocab, bias=False)
        self.wte.weight = self.lm_head.weight  # tied, as nanoGPT
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * N_LAYER))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx, targets):
        T = idx.size(1)
        x = F.dropout(self.wte(idx) + self.wpe(torch.arange(T, dtype=torch.long, device=idx.device)),
                      DROPOUT, self.training)
        for b in self.h:
            x = b(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def load_data():
    with gzip.open(os.path.join(ROOT, "examples", "data", "tinyshakespeare.txt.gz"), "rb") as f:
        text = f.read()
    chars = sorted(set(text))
    lut = torch.full((256,), -1, dtype=torch.long)
    for i, c in enumerate(chars):
        lut[c] = i
    data = lut[torch.frombuffer(bytearray(text), dtype=torch.uint8).long()]
    n = int(0.9 * len(data))
    return data[:n], data[n:], len(chars)


def get_batch(data, gen=None):
    ix = torch.randint(len(data) - BLOCK, (BATCH,), generator=gen)
    x = torch.stack([data[i:i + BLOCK] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + BLOCK] for i in ix])
    return x.to(DEVICE), y.to(DEVICE)


def lr_at(it, total):
    if it < WARMUP:
        return LR * (it + 1) / WARMUP
    progress = min(1.0, max(0.0, (it - WARMUP) / max(1, total - WARMUP)))
    return LR * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


def make(vocab, seed):
    torch.manual_seed(seed)
    model = GPT(vocab).to(DEVICE)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=BETAS, fused=False)
    return model, opt


SCALER = None  # fp16 on cuda: torch.amp.GradScaler


def step(model, opt, data, dtype, lr):
    x, y = get_batch(data)
    for g in opt.param_groups:
        g["lr"] = lr
    if dtype is None:
        loss = model(x, y)
    else:
        with torch.autocast(DEVICE, dtype=dtype):
            loss = model(x, y)
    if SCALER is not None:
        SCALER.scale(loss).backward()
        SCALER.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        SCALER.step(opt)
        SCALER.update()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())  # the step's loss reaches the host, as ampd's progress does


def run_steps(args, precision, train, vocab):
    steps, warmup = int(args.get("steps", 50)), int(args.get("warmup", 10))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    global SCALER
    SCALER = torch.amp.GradScaler(DEVICE) if precision == "fp16" else None
    model, opt = make(vocab, 1337)
    times = []
    for s in range(warmup + steps):
        t0 = time.perf_counter()
        loss = step(model, opt, train, dtype, lr_at(s, 2000))
        if s >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    n = len(times)
    med = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
    nparams = sum(p.numel() for p in model.parameters())
    return {"mode": "torch_gpt", "precision": precision, "threads": torch.get_num_threads(),
            "steps": n, "step_ms_median": med * 1e3, "step_ms_min": times[0] * 1e3,
            "parameters": nparams, "loss": loss, "torch": torch.__version__}


@torch.no_grad()
def evaluate(model, data, dtype, batches, seed):
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(batches):
        x, y = get_batch(data, gen)
        if dtype is None:
            total += float(model(x, y))
        else:
            with torch.autocast(DEVICE, dtype=dtype):
                total += float(model(x, y))
    model.train()
    return total / batches


def run_train(args, precision, train, val, vocab):
    iters, batches = int(args.get("iters", 2000)), int(args.get("eval_batches", 200))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    global SCALER
    SCALER = torch.amp.GradScaler(DEVICE) if precision == "fp16" else None
    model, opt = make(vocab, int(args.get("seed", 1337)))
    t0 = time.perf_counter()
    window = []
    for it in range(iters):
        window.append(step(model, opt, train, dtype, lr_at(it, iters)))
        window = window[-50:]
    train_s = time.perf_counter() - t0
    val_loss = evaluate(model, val, dtype, batches, 1)
    return {"mode": "torch_gpt_train", "precision": precision, "threads": torch.get_num_threads(),
            "iters": iters, "eval_batches": batches, "val_loss": val_loss,
            "train_loss_last50": sum(window) / len(window), "train_s": train_s,
            "torch": torch.__version__}


def main():
    global N_LAYER, N_HEAD, N_EMBD, BLOCK, BATCH, DROPOUT, DEVICE
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    torch.set_num_threads(int(args.get("threads", 2)))
    N_LAYER = int(args.get("n_layer", N_LAYER))
    N_HEAD = int(args.get("n_head", N_HEAD))
    N_EMBD = int(args.get("n_embd", N_EMBD))
    BLOCK = int(args.get("block_size", BLOCK))
    BATCH = int(args.get("batch", BATCH))
    DROPOUT = float(args.get("dropout", DROPOUT))
    DEVICE = args.get("device", DEVICE)
    train, val, vocab = load_data()
    for p in args.get("precision", "fp32").split(","):
        try:
            if args.get("mode", "steps") == "train":
                out = run_train(args, p, train, val, vocab)
            else:
                out = run_steps(args, p, train, vocab)
        except Exception as e:  # noqa: BLE001 - reported in the table, not fatal
            mode = "torch_gpt_train" if args.get("mode") == "train" else "torch_gpt"
            out = {"mode": mode, "precision": p, "error": f"{type(e).__name__}: {e}"[:300],
                   "torch": torch.__version__}
        print(json.dumps(out))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
