#!/usr/bin/env python3
"""Writes a tiny NanoGPT `ckpt.pt` and its expected logits, without PyTorch.

The file follows `torch.save`'s zip format (data.pkl + one raw storage per
tensor) and NanoGPT's train.py layout: a dict with `model` (the state dict of
a `torch.compile`d model, keys prefixed `_orig_mod.`, `lm_head.weight`
sharing `transformer.wte.weight`'s storage), `model_args`, `optimizer`
(AdamW-like state with integer keys), `iter_num`, `best_val_loss` and `config`.
The logits come from a NumPy transcription of NanoGPT's `GPT.forward`
(bias=False, exact GELU, eps 1e-5), an implementation independent of ours.

Usage: scripts/make_tiny_nanogpt.py OUT_DIR   (needs numpy)
Writes OUT_DIR/tiny_nanogpt_ckpt.pt and OUT_DIR/tiny_nanogpt_logits.json.
"""

import collections
import io
import json
import math
import pickle
import sys
import types
import zipfile

import numpy as np

ARGS = dict(n_layer=2, n_head=2, n_embd=16, block_size=8, bias=False, vocab_size=32, dropout=0.0)
TOKENS = [1, 5, 9, 2, 31, 0, 7]

# Stand-ins for the torch globals the pickle refers to, so pickle writes
# `torch._utils._rebuild_tensor_v2` and `torch.FloatStorage` by name.
torch_module = types.ModuleType("torch")
utils_module = types.ModuleType("torch._utils")


class FloatStorage:
    pass


def _rebuild_tensor_v2(*args):
    raise RuntimeError("only for pickling")


FloatStorage.__module__ = "torch"
_rebuild_tensor_v2.__module__ = "torch._utils"
torch_module.FloatStorage = FloatStorage
utils_module._rebuild_tensor_v2 = _rebuild_tensor_v2
sys.modules["torch"] = torch_module
sys.modules["torch._utils"] = utils_module


class Storage:
    def __init__(self, key, array):
        self.key = key
        self.array = np.ascontiguousarray(array, dtype="<f4")


class Tensor:
    """A tensor over a whole storage, pickled as torch does."""

    def __init__(self, storage):
        self.storage = storage

    def __reduce__(self):
        shape = self.storage.array.shape
        strides = tuple(int(s // 4) for s in self.storage.array.strides)
        return (_rebuild_tensor_v2, (self.storage, 0, shape, strides, False, collections.OrderedDict()))


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", FloatStorage, obj.key, "cpu", obj.array.size)
        return None


def save(obj, storages, path):
    buffer = io.BytesIO()
    TorchPickler(buffer, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        for storage in storages:
            archive.writestr(f"archive/data/{storage.key}", storage.array.tobytes())
        archive.writestr("archive/version", "3\n")


def weights(rng):
    c, v, b = ARGS["n_embd"], ARGS["vocab_size"], ARGS["block_size"]
    w = {"transformer.wte.weight": rng.normal(0, 0.3, (v, c)), "transformer.wpe.weight": rng.normal(0, 0.3, (b, c))}
    for i in range(ARGS["n_layer"]):
        p = f"transformer.h.{i}."
        w[p + "ln_1.weight"] = 1 + rng.normal(0, 0.1, c)
        w[p + "attn.c_attn.weight"] = rng.normal(0, 0.3, (3 * c, c))
        w[p + "attn.c_proj.weight"] = rng.normal(0, 0.3, (c, c))
        w[p + "ln_2.weight"] = 1 + rng.normal(0, 0.1, c)
        w[p + "mlp.c_fc.weight"] = rng.normal(0, 0.3, (4 * c, c))
        w[p + "mlp.c_proj.weight"] = rng.normal(0, 0.3, (c, 4 * c))
    w["transformer.ln_f.weight"] = 1 + rng.normal(0, 0.1, c)
    return {k: val.astype(np.float32) for k, val in w.items()}


def layer_norm(x, weight):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * weight


def gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def forward(w, tokens):
    t, c, h = len(tokens), ARGS["n_embd"], ARGS["n_head"]
    d = c // h
    x = w["transformer.wte.weight"][tokens] + w["transformer.wpe.weight"][:t]
    causal = np.triu(np.ones((t, t), dtype=bool), 1)
    for i in range(ARGS["n_layer"]):
        p = f"transformer.h.{i}."
        y = layer_norm(x, w[p + "ln_1.weight"]) @ w[p + "attn.c_attn.weight"].T
        q, k, v = (y[:, j * c:(j + 1) * c].reshape(t, h, d).transpose(1, 0, 2) for j in range(3))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        scores[:, causal] = -np.inf
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(1, 0, 2).reshape(t, c)
        x = x + y @ w[p + "attn.c_proj.weight"].T
        y = gelu(layer_norm(x, w[p + "ln_2.weight"]) @ w[p + "mlp.c_fc.weight"].T)
        x = x + y @ w[p + "mlp.c_proj.weight"].T
    x = layer_norm(x, w["transformer.ln_f.weight"])
    return x @ w["transformer.wte.weight"].T


def main():
    out = sys.argv[1]
    w = weights(np.random.default_rng(7))
    storages = {name: Storage(str(i), array) for i, (name, array) in enumerate(w.items())}
    model = collections.OrderedDict((f"_orig_mod.{k}", Tensor(s)) for k, s in storages.items())
    # Tied: NanoGPT's state dict lists the shared tensor under both names.
    model["_orig_mod.lm_head.weight"] = Tensor(storages["transformer.wte.weight"])
    exp_avg = Storage(str(len(storages)), np.zeros(4, dtype=np.float32))
    checkpoint = {
        "model": model,
        # Two entries: burn-store 0.21 reads integer keys set by SETITEMS
        # (several items, as any real optimiser state) but not by SETITEM.
        "optimizer": {
            "state": {0: {"exp_avg": Tensor(exp_avg)}, 1: {"exp_avg": Tensor(exp_avg)}},
            "param_groups": [{"lr": 6e-4, "params": [0, 1]}],
        },
        "model_args": ARGS,
        "iter_num": 5,
        "best_val_loss": 3.5,
        "config": {"dataset": "tiny"},
    }
    save(checkpoint, list(storages.values()) + [exp_avg], f"{out}/tiny_nanogpt_ckpt.pt")
    logits = forward({k: v.astype(np.float64) for k, v in w.items()}, TOKENS)
    with open(f"{out}/tiny_nanogpt_logits.json", "w") as f:
        json.dump({"tokens": TOKENS, "logits": logits.astype(np.float32).tolist()}, f)


if __name__ == "__main__":
    main()
