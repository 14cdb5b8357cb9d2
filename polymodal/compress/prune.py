"""Magnitude pruning with torch.nn.utils.prune, fine-tuning with the masks in place, then a real shrink.

- `unstructured`: global L1 pruning of the Linear weights of the trainable parts (fusion, head, trainable
  encoders). Zeros in dense tensors: the saved file is not smaller (reported as sparsity only).
- `structured`: L2-norm neuron pruning (`ln_structured`, dim 0) of every Linear → elementwise activation →
  Linear pair: the fusion/head MLPs and, with `encoders=True`, the feed-forward blocks of transformer text
  encoders (intermediate.dense → output.dense). The pruned neuron's bias is masked too, so it outputs
  act(0) = 0 and removing it afterwards is exact; `shrink` then rebuilds smaller Linear layers.
Masks stay attached during fine-tuning (the forward pre-hook multiplies weight_orig by the mask), and are
made permanent with `prune.remove` only after training, so pruned weights stay zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

# Modules whose output at 0 is 0 and which act per element: a removed neuron contributes nothing through them.
ZERO_PRESERVING = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.LeakyReLU, nn.Dropout, nn.Identity)


@dataclass
class LinearPair:
    """`first` produces the neurons that `second` consumes; `owner`/`names` say where to put rebuilt layers."""

    first: nn.Linear
    second: nn.Linear
    owner_first: nn.Module
    name_first: str
    owner_second: nn.Module
    name_second: str
    where: str


def _trainable(m: nn.Module) -> bool:
    return any(p.requires_grad for p in m.parameters())


def linear_pairs(model: nn.Module, encoders: bool = False) -> list[LinearPair]:
    """Linear → (zero-preserving elementwise modules)* → Linear pairs inside nn.Sequential containers of the
    trainable parts, plus (with `encoders`) BERT-style FFNs `intermediate.dense` → `output.dense`."""
    pairs: list[LinearPair] = []
    for name, seq in model.named_modules():
        if name.startswith("encoders.") and not _trainable(seq):
            continue
        if isinstance(seq, nn.Sequential):
            mods = list(seq.named_children())
            for i, (ni, a) in enumerate(mods):
                if not isinstance(a, nn.Linear) or not a.weight.requires_grad:
                    continue
                j = i + 1
                while j < len(mods) and isinstance(mods[j][1], ZERO_PRESERVING):
                    j += 1
                if j < len(mods) and isinstance(mods[j][1], nn.Linear) and mods[j][1].in_features == a.out_features:
                    pairs.append(LinearPair(a, mods[j][1], seq, ni, seq, mods[j][0], f"{name}.{ni}"))
    if encoders:
        for name, m in model.named_modules():
            inter, out = getattr(m, "intermediate", None), getattr(m, "output", None)
            if inter is not None and out is not None and _is_hf_ffn(inter, out):
                pairs.append(LinearPair(inter.dense, out.dense, inter, "dense", out, "dense", f"{name}.ffn"))
    return pairs


HF_ZERO_PRESERVING = ("GELUActivation", "NewGELUActivation", "FastGELUActivation", "QuickGELUActivation",
                      "ReLU", "GELU", "SiLU", "SiLUActivation")


def _is_hf_ffn(inter: nn.Module, out: nn.Module) -> bool:
    """A transformers FFN (BERT layout): dense → act → output.dense, act zero-preserving (HF's own classes)."""
    return isinstance(getattr(inter, "dense", None), nn.Linear) and isinstance(getattr(out, "dense", None), nn.Linear) \
        and type(getattr(inter, "intermediate_act_fn", None)).__name__ in HF_ZERO_PRESERVING


def structured_masks(pairs: list[LinearPair], amount: float) -> None:
    """Mask the `amount` fraction of neurons with the smallest L2 weight norm in each pair's first layer."""
    for p in pairs:
        prune.ln_structured(p.first, "weight", amount=amount, n=2, dim=0)
        if p.first.bias is not None:
            keep = p.first.weight_mask.abs().sum(1) > 0
            prune.custom_from_mask(p.first, "bias", keep.to(p.first.bias.dtype))


def unstructured_masks(model: nn.Module, amount: float, encoders: bool = False) -> list[nn.Linear]:
    """Global L1 pruning over the Linear weights of the trainable parts (and encoders when asked)."""
    layers = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.weight.requires_grad
              and (encoders or not n.startswith("encoders.") or _trainable(m))]
    if layers:
        prune.global_unstructured([(m, "weight") for m in layers], prune.L1Unstructured, amount=amount)
    return layers


def masked_positions(model: nn.Module) -> dict[str, torch.Tensor]:
    """name → boolean tensor of the pruned (masked) positions, for every pruned parameter."""
    return {f"{n}.{b[:-5]}": (buf == 0) for n, m in model.named_modules() for b, buf in m.named_buffers(recurse=False)
            if b.endswith("_mask")}


def make_permanent(model: nn.Module) -> None:
    """prune.remove everywhere: weight = weight_orig * mask becomes a plain parameter again."""
    for m in model.modules():
        for pname in [b[:-5] for b, _ in m.named_buffers(recurse=False) if b.endswith("_mask")]:
            prune.remove(m, pname)


def shrink(pairs: list[LinearPair]) -> dict[str, tuple[int, int]]:
    """Rebuild each pair without its all-zero neurons (rows of `first`, columns of `second`)."""
    sizes = {}
    for p in pairs:
        a, b = p.first, p.second
        keep = (a.weight.abs().sum(1) > 0) | (a.bias.abs() > 0 if a.bias is not None else False)
        keep_idx = keep.nonzero().squeeze(1)
        if len(keep_idx) == 0:  # never remove every neuron: keep the strongest one
            keep_idx = a.weight.norm(dim=1).argmax().view(1)
        new_a = nn.Linear(a.in_features, len(keep_idx), a.bias is not None)
        new_b = nn.Linear(len(keep_idx), b.out_features, b.bias is not None)
        with torch.no_grad():
            new_a.weight.copy_(a.weight[keep_idx])
            if a.bias is not None:
                new_a.bias.copy_(a.bias[keep_idx])
            new_b.weight.copy_(b.weight[:, keep_idx])
            if b.bias is not None:
                new_b.bias.copy_(b.bias)
        for m, old in ((new_a, a), (new_b, b)):
            m.requires_grad_(old.weight.requires_grad)
        setattr(p.owner_first, p.name_first, new_a)
        setattr(p.owner_second, p.name_second, new_b)
        sizes[p.where] = (a.out_features, len(keep_idx))
    return sizes


def resize_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Replace Linear layers whose saved weight has another shape (a shrunk model) before load_state_dict."""
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Linear) and f"{name}.weight" in state:
            w = state[f"{name}.weight"]
            if tuple(w.shape) != tuple(m.weight.shape):
                new = nn.Linear(w.shape[1], w.shape[0], m.bias is not None)
                new.requires_grad_(m.weight.requires_grad)
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
