#!/usr/bin/python3
"""Writes the GPT-2 parity references of tests/unit/test_gpt2_parity.c.

    /usr/bin/python3 tests/reference/make_gpt2_reference.py      (Debian's python3-torch)

A small GPT-2 (CONFIG below) written from the formulas of Hugging Face's
modeling_gpt2.py (transformers is not in Debian), computed in float64:

  token + position embeddings; per block x += attn(ln_1(x)), x += mlp(ln_2(x))
  with causal multi-head attention (scale 1/sqrt(head_dim), masked scores set
  to torch.finfo.min as HF does), Conv1D layers (x @ weight + bias, weight
  [in, out]), MLP 4C with gelu_new (the tanh form); ln_f; layer norm eps 1e-5;
  the LM head tied to wte.

The parameters are drawn once from a fixed torch generator, rounded to
float32, and written in exactly the layout of a Hugging Face checkpoint
(model.safetensors):

  gpt2_tiny_hf.safetensors       GPT2Model / GPT2LMHeadModel names: wte.weight,
                                 wpe.weight, h.N.ln_1.weight, ... ln_f.bias,
                                 with the h.N.attn.bias causal-mask buffers
                                 (F32 [1, 1, P, P]); no lm_head (tied)
  gpt2_tiny_cls_hf.safetensors   GPT2ForSequenceClassification: the same
                                 tensors under `transformer.`, plus
                                 transformer.h.N.attn.masked_bias and
                                 score.weight [labels, C]

and the reference values to gpt2_tiny_ref.safetensors (F64 scalars, F32
tensors; the batch as I32/F32):

  input.idx [B, T], input.mask [B, T] (1 real token, 0 padding, on the right),
  input.labels [B]
  logits [B, T, V]; lm_loss: next-token cross entropy averaged over the
    targets that are real tokens (HF's labels = idx with -100 at padding)
  grad/<name>: d lm_loss / d p for every parameter (HF names, no prefix)
  grad_embeds: d lm_loss / d inputs_embeds (wte(idx), the tied head held fixed)
  cls_logits [B, labels]: score applied to the hidden state of each
    sequence's last real token; cls_loss: cross entropy against labels
  cls_grad/<name>: d cls_loss / d p (the classifier's names, without the
    `transformer.` prefix; score.weight too); cls_grad_embeds
  adamw/<name>: every parameter after ADAMW_STEPS steps on lm_loss of
    torch.optim.AdamW(lr, betas, eps, weight_decay) with the gradient clipped
    by torch.nn.utils.clip_grad_norm_(max_norm) and the learning rate scaled by
    HF's get_linear_schedule_with_warmup(warmup, total) (step s = 0, 1, ...
    uses lr * (s / warmup if s < warmup else max(0, (total - s) / (total - warmup))));
  adamw_loss [ADAMW_STEPS]: the loss at each step, before its update
"""
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_reference import write_safetensors  # noqa: E402  (the layout runtime/safetensors.h writes)

CONFIG = dict(layers=2, c=32, heads=4, vocab=64, positions=20, batch=3, t=16, labels=3)
LENGTHS = [16, 11, 5]        # real tokens per sequence; the rest is padding
PAD = 63                     # the token id written at padded positions (its value must not matter)
ADAMW = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.1, max_norm=1.0, warmup=1, total=4)
ADAMW_STEPS = 3
SEED = 20261204
HERE = os.path.dirname(os.path.abspath(__file__))


def param_shapes(cfg):
    """HF names and shapes of GPT2Model's parameters, in HF's order"""
    c, out = cfg["c"], []
    out.append(("wte.weight", (cfg["vocab"], c)))
    out.append(("wpe.weight", (cfg["positions"], c)))
    for i in range(cfg["layers"]):
        p = "h.%d." % i
        out += [(p + "ln_1.weight", (c,)), (p + "ln_1.bias", (c,)),
                (p + "attn.c_attn.weight", (c, 3 * c)), (p + "attn.c_attn.bias", (3 * c,)),
                (p + "attn.c_proj.weight", (c, c)), (p + "attn.c_proj.bias", (c,)),
                (p + "ln_2.weight", (c,)), (p + "ln_2.bias", (c,)),
                (p + "mlp.c_fc.weight", (c, 4 * c)), (p + "mlp.c_fc.bias", (4 * c,)),
                (p + "mlp.c_proj.weight", (4 * c, c)), (p + "mlp.c_proj.bias", (c,))]
    out += [("ln_f.weight", (c,)), ("ln_f.bias", (c,))]
    return out


def draw_params(cfg, gen, torch):
    """values large enough that every nonlinearity matters (HF's 0.02 init
    would leave the blocks near the identity); rounded to float32"""
    ps = {}
    for name, shape in param_shapes(cfg):
        z = torch.randn(shape, generator=gen, dtype=torch.float64)
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
            v = 1 + 0.2 * z
        elif len(shape) == 2 and name.startswith(("wte", "wpe")):
            v = 0.5 * z
        elif len(shape) == 2:
            v = z / math.sqrt(shape[0])
        else:
            v = 0.1 * z
        ps[name] = v.float().double()
    return ps


def layernorm(x, w, b):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / (var + 1e-5).sqrt() * w + b


def gelu_new(x):
    return 0.5 * x * (1 + (math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)).tanh())


def hidden(cfg, p, embeds, torch):
    """GPT2Model's last hidden state from inputs_embeds [B, T, C]"""
    B, T, C = embeds.shape
    H, hd = cfg["heads"], C // cfg["heads"]
    x = embeds + p["wpe.weight"][:T]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(cfg["layers"]):
        q = "h.%d." % i
        a = layernorm(x, p[q + "ln_1.weight"], p[q + "ln_1.bias"])
        qkv = a @ p[q + "attn.c_attn.weight"] + p[q + "attn.c_attn.bias"]
        qq, kk, vv = (t.reshape(B, T, H, hd).transpose(1, 2) for t in qkv.split(C, dim=2))
        s = (qq @ kk.transpose(-1, -2)) / math.sqrt(hd)
        s = torch.where(causal, s, torch.tensor(torch.finfo(s.dtype).min, dtype=s.dtype))
        y = (s.softmax(-1) @ vv).transpose(1, 2).reshape(B, T, C)
        x = x + (y @ p[q + "attn.c_proj.weight"] + p[q + "attn.c_proj.bias"])
        m = layernorm(x, p[q + "ln_2.weight"], p[q + "ln_2.bias"])
        m = gelu_new(m @ p[q + "mlp.c_fc.weight"] + p[q + "mlp.c_fc.bias"])
        x = x + (m @ p[q + "mlp.c_proj.weight"] + p[q + "mlp.c_proj.bias"])
    return layernorm(x, p["ln_f.weight"], p["ln_f.bias"])


def lm_loss(logits, idx, mask, torch):
    """HF GPT2LMHeadModel: shift, labels = idx with -100 where padding, mean"""
    labels = torch.where(mask[:, 1:] > 0, idx[:, 1:], torch.tensor(-100))
    V = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), labels.reshape(-1), ignore_index=-100)


def cls_logits(cfg, p, score, embeds, mask, torch):
    """GPT2ForSequenceClassification: score on the last real token"""
    h = hidden(cfg, p, embeds, torch)
    last = mask.sum(1).long() - 1
    return h[torch.arange(h.shape[0]), last] @ score.T


def f32(t):
    return t.detach().numpy().astype(np.float32)


def main():
    try:
        import torch
    except ImportError:
        sys.exit("make_gpt2_reference.py needs PyTorch: run it with Debian's /usr/bin/python3 (apt-get install python3-torch)")
    torch.set_num_threads(1)
    cfg = CONFIG
    gen = torch.Generator().manual_seed(SEED)
    p0 = draw_params(cfg, gen, torch)
    score0 = (torch.randn(cfg["labels"], cfg["c"], generator=gen, dtype=torch.float64) / math.sqrt(cfg["c"])).float().double()
    B, T, V = cfg["batch"], cfg["t"], cfg["vocab"]
    idx = torch.randint(0, V - 1, (B, T), generator=gen)
    mask = torch.zeros(B, T, dtype=torch.float64)
    for b, n in enumerate(LENGTHS):
        mask[b, :n] = 1
        idx[b, n:] = PAD
    labels = torch.randint(0, cfg["labels"], (B,), generator=gen)
    names = [n for n, _ in param_shapes(cfg)]

    # ---- the checkpoints, in Hugging Face's layout
    P = cfg["positions"]
    tril = torch.tril(torch.ones(P, P)).reshape(1, 1, P, P).numpy().astype(np.float32)
    lm_file, cls_file = [], []
    for n in names:
        lm_file.append((n, f32(p0[n])))
        cls_file.append(("transformer." + n, f32(p0[n])))
        if n.endswith("attn.c_proj.bias"):   # HF's buffers sit after the block's parameters
            lm_file.append((n.replace("c_proj.bias", "bias"), tril))
            cls_file.append(("transformer." + n.replace("c_proj.bias", "bias"), tril))
            cls_file.append(("transformer." + n.replace("c_proj.bias", "masked_bias"), np.array(-1e4, dtype=np.float32)))
    cls_file.append(("score.weight", f32(score0)))
    meta = {"format": "pt"}
    write_safetensors(os.path.join(HERE, "gpt2_tiny_hf.safetensors"), lm_file, meta)
    write_safetensors(os.path.join(HERE, "gpt2_tiny_cls_hf.safetensors"), cls_file, meta)

    # ---- LM head: logits, loss, gradients
    # d loss / d inputs_embeds: the embeddings as a leaf of their own (the
    # tied head still reads wte); d loss / d p: through the lookup wte[idx]
    p = {n: v.clone().requires_grad_(True) for n, v in p0.items()}
    embeds = p["wte.weight"].detach()[idx].clone().requires_grad_(True)
    loss_embeds = lm_loss(hidden(cfg, p, embeds, torch) @ p["wte.weight"].T, idx, mask, torch)
    g_embeds = torch.autograd.grad(loss_embeds, embeds)[0]
    logits_full = hidden(cfg, p, p["wte.weight"][idx], torch) @ p["wte.weight"].T
    loss = lm_loss(logits_full, idx, mask, torch)
    grads = torch.autograd.grad(loss, [p[n] for n in names])
    out = [("input.idx", idx.numpy().astype(np.int32)), ("input.mask", mask.numpy().astype(np.float32)),
           ("input.labels", labels.numpy().astype(np.int32)),
           ("logits", f32(logits_full)), ("lm_loss", np.array([loss.item()], dtype=np.float64)),
           ("grad_embeds", f32(g_embeds))]
    out += [("grad/" + n, f32(g)) for n, g in zip(names, grads)]

    # ---- classification head
    pc = {n: v.clone().requires_grad_(True) for n, v in p0.items()}
    score = score0.clone().requires_grad_(True)
    e_c = pc["wte.weight"][idx]
    e_c.retain_grad()
    cl = cls_logits(cfg, pc, score, e_c, mask, torch)
    closs = torch.nn.functional.cross_entropy(cl, labels)
    closs.backward()
    out += [("cls_logits", f32(cl)), ("cls_loss", np.array([closs.item()], dtype=np.float64)),
            ("cls_grad_embeds", f32(e_c.grad))]
    out += [("cls_grad/" + n, f32(pc[n].grad)) for n in names]
    out.append(("cls_grad/score.weight", f32(score.grad)))

    # ---- AdamW with clipping and the linear warm-up / decay schedule
    pa = [p0[n].clone().requires_grad_(True) for n in names]
    opt = torch.optim.AdamW(pa, lr=ADAMW["lr"], betas=(ADAMW["beta1"], ADAMW["beta2"]), eps=ADAMW["eps"],
                            weight_decay=ADAMW["wd"])
    w, tot = ADAMW["warmup"], ADAMW["total"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / max(1, w) if s < w else max(0.0, (tot - s) / max(1, tot - w)))
    step_losses = []
    for _ in range(ADAMW_STEPS):
        opt.zero_grad()
        q = dict(zip(names, pa))
        l = lm_loss(hidden(cfg, q, q["wte.weight"][idx], torch) @ q["wte.weight"].T, idx, mask, torch)
        l.backward()
        torch.nn.utils.clip_grad_norm_(pa, ADAMW["max_norm"])
        opt.step()
        sched.step()
        step_losses.append(l.item())
    out.append(("adamw_loss", np.array(step_losses, dtype=np.float64)))
    out += [("adamw/" + n, f32(v)) for n, v in zip(names, pa)]

    meta = {k: str(v) for k, v in cfg.items()}
    meta.update({"adamw." + k: repr(v) for k, v in ADAMW.items()})
    meta.update({"adamw_steps": str(ADAMW_STEPS), "lengths": json.dumps(LENGTHS), "pad": str(PAD),
                 "seed": str(SEED), "reference": "torch " + torch.__version__ + ", float64",
                 "grad_norm": repr(math.sqrt(sum(float((g * g).sum()) for g in grads)))})
    path = os.path.join(HERE, "gpt2_tiny_ref.safetensors")
    write_safetensors(path, out, meta)
    for f in ("gpt2_tiny_hf.safetensors", "gpt2_tiny_cls_hf.safetensors", "gpt2_tiny_ref.safetensors"):
        print("%s: %d bytes" % (os.path.relpath(os.path.join(HERE, f)), os.path.getsize(os.path.join(HERE, f))))
    print("lm_loss %.6f cls_loss %.6f grad norm %s adamw losses %s" % (
        loss.item(), closs.item(), meta["grad_norm"], " ".join("%.6f" % v for v in step_losses)))


if __name__ == "__main__":
    main()
