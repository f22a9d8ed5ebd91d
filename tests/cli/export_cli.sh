#!/usr/bin/env bash
# `ampd export --format hf-gpt2` as a user meets it: the three files and their content
# (checked with numpy against the checkpoint: names, Conv1D transposes, zero biases of a
# bias-free model, config.json, vocab.json), `ampd sample --logits-out`, and the errors
# (not a GPT checkpoint, DIR not empty without --force, DIR not writable).
# The Hugging Face comparison itself is tests/python/check_hf_export.py (python_hf_export).
#   export_cli.sh AMPD_BINARY SOURCE_DIR
set -euo pipefail
AMPD=$1
SRC=$2
PY=/usr/bin/python3
export PYTHONDONTWRITEBYTECODE=1  # it imports tests/python/gpt_reference.py: no __pycache__ there
$PY -c 'import numpy' 2>/dev/null || { echo "SKIP: /usr/bin/python3 has no numpy"; exit 77; }
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

fail() { echo "FAIL: $*"; exit 1; }

# Exit status and stderr of a command that must fail: expect_fail CODE PATTERN CMD...
expect_fail() {
  local want=$1 pattern=$2
  shift 2
  set +e
  "$@" > "$work/out.txt" 2> "$work/err.txt"
  local code=$?
  set -e
  [ "$code" -eq "$want" ] || fail "$* exited $code, want $want: $(cat "$work/err.txt")"
  grep -q -- "$pattern" "$work/err.txt" || fail "$*: stderr lacks '$pattern': $(cat "$work/err.txt")"
}

# Two tiny GPTs (a few seconds each): with biases, and without.
"$AMPD" train -f "$SRC/tests/cli/tiny_gpt.yaml" --backend cpu --threads 2 --out "$work/gpt" -q > /dev/null
sed 's/bias: true/bias: false/' "$SRC/tests/cli/tiny_gpt.yaml" > "$work/nobias.yaml"
"$AMPD" train -f "$work/nobias.yaml" --backend cpu --threads 2 --out "$work/gpt-nobias" -q > /dev/null

# 1. Export (a checkpoint directory: its newest checkpoint) and check every file.
"$AMPD" export --format hf-gpt2 "$work/gpt" "$work/hf" > "$work/export.txt"
grep -q "as hf-gpt2" "$work/export.txt" || fail "no summary line: $(cat "$work/export.txt")"
"$AMPD" export "$work/gpt-nobias" "$work/hf-nobias" > /dev/null
ckpt=$(ls "$work"/gpt/step-*.safetensors | tail -1)
ckpt_nb=$(ls "$work"/gpt-nobias/step-*.safetensors | tail -1)
$PY - "$ckpt" "$work/hf" "$ckpt_nb" "$work/hf-nobias" "$SRC/tests/python" <<'PYEOF'
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[5])
from gpt_reference import load_safetensors

def check(ckpt_path, out, bias):
    ck, ck_meta = load_safetensors(ckpt_path)
    hf, meta = load_safetensors(out + "/model.safetensors")
    assert meta.get("format") == "pt", meta
    cfg = json.load(open(out + "/config.json"))
    spec = json.loads(ck_meta["ampd.spec"])["model"]["gpt"]
    C, L, T = spec["n_embd"], spec["n_layer"], spec["block_size"]
    V = ck["transformer.wte.weight"].shape[0]
    want = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": V,
            "n_positions": T, "n_ctx": T, "n_embd": C, "n_layer": L, "n_head": spec["n_head"],
            "activation_function": "gelu", "layer_norm_epsilon": 1e-5,
            "tie_word_embeddings": True, "scale_attn_weights": True}
    for k, v in want.items():
        assert cfg[k] == v, (k, cfg[k], v)
    assert 0 <= cfg["bos_token_id"] < V, cfg["bos_token_id"]
    names = set()
    for i in range(L):
        h = "transformer.h.%d." % i
        for n, shape in (("attn.c_attn", (C, 3 * C)), ("attn.c_proj", (C, C)),
                         ("mlp.c_fc", (C, 4 * C)), ("mlp.c_proj", (4 * C, C))):
            w = hf[h + n + ".weight"]
            assert w.shape == shape, (n, w.shape, shape)
            assert np.array_equal(w, ck[h + n + ".weight"].T), n + ": not the transpose"
            b = hf[h + n + ".bias"]
            assert b.shape == (shape[1],), (n, b.shape)
            assert np.array_equal(b, ck[h + n + ".bias"]) if bias else not b.any(), n
            names |= {h + n + ".weight", h + n + ".bias"}
        for n in ("ln_1", "ln_2"):
            assert np.array_equal(hf[h + n + ".weight"], ck[h + n + ".weight"])
            assert np.array_equal(hf[h + n + ".bias"], ck[h + n + ".bias"]) if bias \
                else not hf[h + n + ".bias"].any()
            names |= {h + n + ".weight", h + n + ".bias"}
    for n in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"):
        assert np.array_equal(hf[n], ck[n].reshape(hf[n].shape)), n
        assert hf[n].dtype == np.float32
    names |= {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
              "transformer.ln_f.bias"}
    assert set(hf) == names, sorted(set(hf) ^ names)
    vocab = json.load(open(out + "/vocab.json"))
    assert vocab["vocabulary"] == ck_meta["ampd.vocabulary"], vocab["vocabulary"][:20]
    assert "".join(vocab["itos"]) == ck_meta["ampd.vocabulary"][len("chars:"):]
    assert len(vocab["itos"]) == V and len(vocab["byte_values"]) == V
    print("export ok:", out, len(hf), "tensors, bias" if bias else "tensors, no bias")

check(sys.argv[1], sys.argv[2], True)
check(sys.argv[3], sys.argv[4], False)
PYEOF

# 2. --logits-out: (prompt length, vocabulary) float32, nothing generated; the numpy
# reference (tests/python/gpt_reference.py) gives the same logits.
"$AMPD" sample --checkpoint "$ckpt" --backend cpu --prompt "ROMEO:" --logits-out "$work/logits.npy" > "$work/sample.txt"
[ ! -s "$work/sample.txt" ] || fail "--logits-out generated text: $(cat "$work/sample.txt")"
$PY - "$work/logits.npy" "$ckpt" "$SRC/tests/python" <<'PYEOF'
import sys
import numpy as np
sys.path.insert(0, sys.argv[3])
from gpt_reference import checkpoint_logits
z = np.load(sys.argv[1])
assert z.dtype == np.float32 and z.shape[0] == len("ROMEO:"), (z.dtype, z.shape)
ref = checkpoint_logits(sys.argv[2], "ROMEO:")
d = np.abs(z - ref).max()
print("logits-out ok: shape", z.shape, "max abs diff vs the FP64 numpy reference %.2e" % d)
assert d <= 1e-3, d
PYEOF
expect_fail 2 "prompt" "$AMPD" sample --checkpoint "$ckpt" --backend cpu \
  --prompt "$(printf 'x%.0s' $(seq 1 40))" --logits-out "$work/long.npy"

# 3. Errors: DIR not empty (exit 2, names --force), then --force replaces the files.
expect_fail 2 "not empty" "$AMPD" export "$ckpt" "$work/hf"
echo keep > "$work/hf/README.md"
"$AMPD" export --force "$ckpt" "$work/hf" > /dev/null || fail "--force did not export"
[ -f "$work/hf/README.md" ] || fail "--force removed a file it does not own"
# DIR is a file; DIR cannot be created (under a regular file); DIR not writable.
echo x > "$work/file"
expect_fail 2 "not a directory" "$AMPD" export "$ckpt" "$work/file"
expect_fail 2 "cannot create directory" "$AMPD" export "$ckpt" "$work/file/sub"
if [ "$(id -u)" != 0 ]; then
  mkdir "$work/ro" && chmod a-w "$work/ro"
  expect_fail 2 "cannot write into" "$AMPD" export "$ckpt" "$work/ro"
fi
# Not a checkpoint; not a language model's checkpoint (a digits classifier).
expect_fail 2 "" "$AMPD" export "$work/file" "$work/x1"
sed -e 's/epochs: 30/epochs: 1/' -e 's/eval_every: 230/eval_every: 10/' \
  "$SRC/examples/digits-fp32.yaml" > "$work/digits.yaml"
"$AMPD" train -f "$work/digits.yaml" --backend cpu --threads 2 --out "$work/digits" -q > /dev/null
expect_fail 2 "not a language model" "$AMPD" export "$work/digits" "$work/x2"
[ ! -e "$work/x2" ] || fail "a refused export created its directory"
# --help teaches with an example.
"$AMPD" export --help | grep -q "ampd export --format hf-gpt2" || fail "--help has no example"
echo "export_cli: all checks passed"
