"""A PyTorch GPT identical to ddp's (src/model/gpt.c), and safetensors reading and writing.

The same parameter names and shapes as ddp's export (nn.Linear weights (out, in)), the
token plus learned position embedding, pre-LayerNorm blocks (ln_1, c_attn, causal softmax
attention scaled by 1/sqrt(head size), c_proj; ln_2, c_fc, GELU with the tanh
approximation, c_proj), ln_f, and logits through the token embedding (tied: there is no
separate output matrix, as in ddp's export). LayerNorm eps is 1e-5, PyTorch's default and
ddp's.

There is no safetensors package here, so the format is read and written directly: an
8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}
with "__metadata__" (string pairs), then the raw little-endian data.

Imported by tests/model/make_gpt_reference.py and bench/gpt/torch_ddp_gpt.py.
"""
import json
import math
import re
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

_DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def parse_spec(describe):
    """ddp's model description "gpt L4 C256 H4 T128 V256" as a dict."""
    m = re.fullmatch(r"gpt L(\d+) C(\d+) H(\d+) T(\d+) V(\d+)", describe)
    if not m:
        raise ValueError("not a ddp GPT description: %r" % describe)
    layers, dim, heads, ctx, vocab = map(int, m.groups())
    return dict(layers=layers, dim=dim, heads=heads, ctx=ctx, vocab=vocab)


def describe(spec):
    return "gpt L{layers} C{dim} H{heads} T{ctx} V{vocab}".format(**spec)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        hs = C // self.heads
        # [q | k | v] along the channels, each with its heads contiguous, as ddp lays out
        # c_attn's output.
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.heads, hs).transpose(1, 2)  # (B, NH, T, hs)
        k = k.view(B, T, self.heads, hs).transpose(1, 2)
        v = v.view(B, T, self.heads, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, NH, T, T)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim)
        self.c_proj = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = MLP(dim)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, layers, dim, heads, ctx, vocab):
        super().__init__()
        if dim % heads:
            raise ValueError("width %d is not a multiple of %d heads" % (dim, heads))
        self.spec = dict(layers=layers, dim=dim, heads=heads, ctx=ctx, vocab=vocab)
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab, dim),
                wpe=nn.Embedding(ctx, dim),
                h=nn.ModuleList(Block(dim, heads) for _ in range(layers)),
                ln_f=nn.LayerNorm(dim, eps=1e-5),
            )
        )
        self.init_gpt2()

    def init_gpt2(self, generator=None):
        """GPT-2's initialization, as ddp's (not its random stream): weights normal(0, 0.02),
        the projections into the residual stream scaled by 1/sqrt(2 L), biases 0,
        LayerNorm weights 1. Used where no ddp export gives the starting point."""
        L = self.spec["layers"]
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    p.normal_(0.0, 0.02 / math.sqrt(2 * L), generator=generator)
                elif p.dim() == 2:
                    p.normal_(0.0, 0.02, generator=generator)
                elif re.search(r"ln_\w+\.weight$", name):
                    p.fill_(1.0)
                else:
                    p.zero_()

    def forward(self, idx):
        B, T = idx.shape
        t = self.transformer
        x = t.wte(idx) + t.wpe(torch.arange(T, device=idx.device))
        for block in t.h:
            x = block(x)
        x = t.ln_f(x)
        return x @ t.wte.weight.t()  # (B, T, V): the tied output projection

    def loss(self, idx, targets):
        """Mean cross-entropy over all B*T predictions, as ddp's trainer."""
        logits = self(idx)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))

    def param_groups(self, weight_decay):
        """ddp's decay groups: weight decay on the 2-D matrices, which include the token
        embedding, and not on biases, LayerNorm parameters or the position embedding."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (decay if decays(name, p.dim()) else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]


def decays(name, ndim):
    return ndim == 2 and name != "transformer.wpe.weight"


# ---- safetensors -------------------------------------------------------------------------


def read_safetensors(path):
    """(tensors {name: numpy array}, metadata {str: str})."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    data = memoryview(raw)[8 + n :]
    out = {}
    for name, t in header.items():
        b0, b1 = t["data_offsets"]
        dtype = np.dtype(_DTYPES[t["dtype"]]).newbyteorder("<")
        out[name] = np.frombuffer(data[b0:b1], dtype=dtype).reshape(t["shape"]).copy()
    return out, meta


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: numpy array or torch tensor}, written in the given order."""
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, a in tensors.items():
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().numpy()
        a = np.ascontiguousarray(a)
        if a.dtype not in _NAMES:
            raise ValueError("%s: dtype %s has no safetensors name here" % (name, a.dtype))
        blob = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": _NAMES[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    # Spaces up to a multiple of 8, as ddp writes it, so the data start aligned.
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def load_ddp_export(model, path):
    """Loads a ddp export into model, checking that every name and shape matches both
    ways. Returns the export's metadata."""
    tensors, meta = read_safetensors(path)
    own = dict(model.named_parameters())
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    if missing or extra:
        raise ValueError("%s: missing %s, unexpected %s" % (path, missing, extra))
    with torch.no_grad():
        for name, p in own.items():
            a = tensors[name]
            if tuple(a.shape) != tuple(p.shape):
                raise ValueError("%s: %s has shape %s, the model %s" % (path, name, a.shape, tuple(p.shape)))
            p.copy_(torch.from_numpy(a.astype(np.float32)))
    return meta


def save_ddp_export(model, path):
    """Writes model in ddp's export layout (loadable by ddp-generate and
    ddp_safetensors_read): F32 tensors in ddp's order, which is named_parameters' order."""
    tensors = {n: p.detach().float() for n, p in model.named_parameters()}
    write_safetensors(path, tensors, {"model": describe(model.spec)})
