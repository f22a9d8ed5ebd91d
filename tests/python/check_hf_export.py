#!/usr/bin/env python3
"""Checks `ampd export --format hf-gpt2` end to end: the export loads with
transformers.GPT2LMHeadModel.from_pretrained and gives the logits ampd gives.

Usage: check_hf_export.py AMPD_BINARY CHECKPOINT [PROMPT]
  CHECKPOINT  a GPT checkpoint file or a job's checkpoint directory
  PROMPT      default "ROMEO:\\nO, " (at most block_size characters)

Steps: `ampd export --format hf-gpt2 CHECKPOINT TMP/hf`; `ampd sample --checkpoint
CHECKPOINT --prompt PROMPT --logits-out TMP/logits.npy --backend cpu` (ampd's logits at every
prompt position); the prompt encoded with TMP/hf/vocab.json and run through
GPT2LMHeadModel.from_pretrained(TMP/hf) in FP32 (eval mode); then, per position:
  max |ampd - transformers| <= 1e-3 for an FP32 checkpoint (ampd computes in FP32 on the
  CPU; transformers in FP32 with torch's kernels, so they differ by rounding only), and
  <= 3e-2 x max |logit| for an FP16/BF16 one (ampd's forward then runs in that precision
  while the export holds the FP32 masters);
and the arg-max token agrees at every position where the top two logits are more than
twice the bound apart.

Measured when this was written (transformers 5.25.0, torch 2.15.0 on the CPU, in a venv
under build/), the default prompt unless noted:
  tests/cli/tiny_gpt.yaml after 30 steps (2 layers, 32 wide, 16 positions), fp32:
    max abs diff 7.2e-07 over 10 x 65 logits (max |logit| 2.6); bias: false 4.8e-07;
    trained in fp16: 1.1e-03, in bf16: 1.0e-02 (bound 7.8e-02 for both);
  examples/shakespeare-char-fp32.yaml after 200 steps (4 layers, 128 wide, 64 positions),
    a 60-character prompt: max abs diff 1.4e-06 over 60 x 65 logits (max |logit| 6.8);
    greedy generate() of 40 tokens gave the text `ampd sample --temperature 0` gives.

Exit status: 0 match, 1 mismatch or failure, 77 when torch or transformers is not
importable (ctest reports the test as skipped; CI does not install transformers).
"""

import json
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    from transformers import GPT2LMHeadModel
except ImportError as e:
    print("SKIP: %s (%s): this check needs numpy, torch and transformers" % (e, sys.executable))
    sys.exit(77)


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    ampd, ckpt = argv[1], argv[2]
    prompt = argv[3] if len(argv) > 3 else "ROMEO:\nO, "
    with tempfile.TemporaryDirectory() as tmp:
        hf = os.path.join(tmp, "hf")
        logits_path = os.path.join(tmp, "logits.npy")
        subprocess.run([ampd, "export", "--format", "hf-gpt2", ckpt, hf], check=True)
        subprocess.run([ampd, "sample", "--checkpoint", ckpt, "--prompt", prompt, "--backend",
                        "cpu", "--logits-out", logits_path], check=True)
        ours = np.load(logits_path).astype(np.float64)
        vocab = json.load(open(os.path.join(hf, "vocab.json")))
        ids = [vocab["byte_values"].index(b) for b in prompt.encode("utf-8")]
        with open(os.path.join(hf, "model.safetensors"), "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            precision = json.loads(f.read(n))["__metadata__"].get("ampd.source_precision",
                                                                   "fp32")
        model = GPT2LMHeadModel.from_pretrained(hf).float()
        model.eval()
        with torch.no_grad():
            theirs = model(torch.tensor([ids])).logits[0].double().numpy()
    if ours.shape != theirs.shape:
        print("FAIL: logits shape: ampd %s, transformers %s" % (ours.shape, theirs.shape))
        return 1
    diff = np.abs(ours - theirs).max()
    scale = np.abs(theirs).max()
    bound = 1e-3 if precision == "fp32" else 3e-2 * scale
    top2 = np.sort(theirs, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * bound
    argmax_ok = (ours.argmax(-1) == theirs.argmax(-1))[clear].all()
    print("hf-gpt2 export (%s checkpoint): %d x %d logits, max abs diff %.2e (bound %.1e), "
          "max |logit| %.2f, arg-max agrees at %d clear positions: %s"
          % (precision, ours.shape[0], ours.shape[1], diff, bound, scale, int(clear.sum()),
             argmax_ok))
    if not (diff <= bound and argmax_ok):
        print("FAIL: transformers' logits differ from ampd's")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
