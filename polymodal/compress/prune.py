"""Magnitude pruning with torch.nn.utils.prune, fine-tuning with the masks in place, then a real shrink.

- `unstructured`: global L1 pruning of the Linear weights of the trainable parts (fusion, head, trainable
  encoders). Zeros in dense tensors: the saved file is not smaller (reported as sparsity only).
- `structured`: L2-norm neuron pruning (`ln_structured`, dim 0) of every Linear → elementwise activation →
  Linear pair: the fusion/head MLPs and, with `encoders=True`, the feed-forward blocks of transformer text
  encoders (intermediate.dense → output.dense). The pruned neuron's bias is masked too, so it outputs
  act(0) = 0 and removing it afterwards is exact; `shrink` then rebuilds smaller Linear layers.
- CNN channels (`structured` with `encoders=True`): each inverted-residual block of MobileNetV2 /
  EfficientNet-Lite image encoders loses a fraction of its hidden (expanded) channels, removed for real
  before fine-tuning (`prune_cnn_channels`); with calibration images the channels are chosen and the project
  conv refitted against the unpruned CNN (`select_and_refit`), since a frozen CNN is not retrained.
Masks stay attached during fine-tuning (the forward pre-hook multiplies weight_orig by the mask), and are
made permanent with `prune.remove` only after training, so pruned weights stay zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from polymodal.encoders.image import InvertedResidual

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
    """Replace Linear layers whose saved weight has another shape (a shrunk model) before load_state_dict;
    resize channel-pruned Conv2d / BatchNorm2d layers in place (their classes, e.g. static-padding convs,
    are kept)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) and f"{name}.weight" in state:
            _resize_channels(m, name, state)
            continue
        if isinstance(m, nn.Linear) and f"{name}.weight" in state:
            w = state[f"{name}.weight"]
            if tuple(w.shape) != tuple(m.weight.shape):
                new = nn.Linear(w.shape[1], w.shape[0], m.bias is not None)
                new.requires_grad_(m.weight.requires_grad)
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _resize_channels(m: nn.Module, name: str, state: dict[str, torch.Tensor]) -> None:
    w = state[f"{name}.weight"]
    if tuple(w.shape) == tuple(m.weight.shape):
        return
    if isinstance(m, nn.BatchNorm2d):
        n = w.shape[0]
        _set_param(m, "weight", torch.empty(n))
        if m.bias is not None:
            _set_param(m, "bias", torch.empty(n))
        for buf in ("running_mean", "running_var"):
            if getattr(m, buf) is not None:
                setattr(m, buf, torch.empty(n))
        m.num_features = n
        return
    depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
    _set_param(m, "weight", torch.empty(w.shape))
    if m.bias is not None:
        _set_param(m, "bias", torch.empty(w.shape[0]))
    m.out_channels = w.shape[0]
    if depthwise:
        m.in_channels = m.groups = w.shape[0]
    else:
        m.in_channels = w.shape[1] * m.groups


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- channel pruning of inverted-residual CNN blocks (MobileNetV2, EfficientNet-Lite) --------------------

@dataclass
class InvertedBlock:
    """The hidden (expanded) channels of an inverted-residual block run expand → bn0 → act → depthwise →
    bn1 → act → project → bn2; removing hidden channel c touches every one of these modules at index c."""

    expand: nn.Conv2d
    bn0: nn.BatchNorm2d
    depthwise: nn.Conv2d
    bn1: nn.BatchNorm2d
    project: nn.Conv2d
    bn2: nn.BatchNorm2d
    act: nn.Module  # the elementwise activation after bn1 (ReLU6 in both CNNs)
    where: str

    @property
    def hidden(self) -> int:
        return self.depthwise.out_channels


def inverted_blocks(model: nn.Module) -> list[InvertedBlock]:
    """Blocks with an expansion conv: polymodal's MobileNetV2 `InvertedResidual` (torchvision layout) and
    `efficientnet_lite_pytorch` MBConv blocks without squeeze-and-excitation (the Lite variants have none)."""
    blocks = []
    for name, m in model.named_modules():
        if isinstance(m, InvertedResidual) and len(m.conv) == 4:  # expand=1 blocks have 3 parts: nothing to cut
            (e, b0, _), (d, b1, a1), pr, b2 = m.conv[0], m.conv[1], m.conv[2], m.conv[3]
            blocks.append(InvertedBlock(e, b0, d, b1, pr, b2, a1, name))
        elif all(hasattr(m, a) for a in ("_expand_conv", "_bn0", "_depthwise_conv", "_bn1", "_project_conv",
                                         "_bn2")) and not getattr(m, "has_se", False):
            blocks.append(InvertedBlock(m._expand_conv, m._bn0, m._depthwise_conv, m._bn1, m._project_conv,
                                        m._bn2, m._swish, name))
    return blocks


def channel_importance(b: InvertedBlock) -> torch.Tensor:
    """|gamma of bn1| × ‖bn2-scaled project weights of the channel‖₂, per hidden channel.

    Why: bn1 normalises the depthwise output with its running statistics, so the channel's activation varies
    around its mean with a spread of about |gamma1|; what reaches the block output is that spread times the
    channel's column of the project conv, scaled per output channel by bn2 (gamma2 / sqrt(var2 + eps)). The
    channel's mean is not lost on removal (`prune_block` folds it into bn2), so the spread is the error removal
    makes. A channel with gamma1 = 0 is constant and scores 0: removing it is exact (tested).
    """
    with torch.no_grad():
        scale2 = b.bn2.weight / torch.sqrt(b.bn2.running_var + b.bn2.eps)
        w = b.project.weight[:, :, 0, 0] * scale2[:, None]  # (out, hidden)
        return b.bn1.weight.abs() * w.norm(dim=0)


def _expected_activation(act: nn.Module, mean: torch.Tensor, std: torch.Tensor, points: int = 32) -> torch.Tensor:
    """E[act(mean + std·z)], z ~ N(0, 1), by Gauss–Hermite quadrature (exactly act(mean) where std = 0)."""
    import numpy as np

    x, w = np.polynomial.hermite.hermgauss(points)
    z = torch.tensor(x * np.sqrt(2.0), dtype=mean.dtype)
    wt = torch.tensor(w / np.sqrt(np.pi), dtype=mean.dtype)
    with torch.no_grad():
        return (act(mean[:, None] + std[:, None] * z[None, :]) * wt).sum(1)


def _set_param(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.detach().clone().contiguous(), requires_grad=old.requires_grad))


def _cut_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    for p in ("weight", "bias"):
        if getattr(bn, p) is not None:
            _set_param(bn, p, getattr(bn, p)[idx])
    for buf in ("running_mean", "running_var"):
        if getattr(bn, buf) is not None:
            setattr(bn, buf, getattr(bn, buf)[idx].clone())
    bn.num_features = len(idx)


def prune_block(b: InvertedBlock, amount: float, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Remove the `amount` fraction of hidden channels with the lowest `channel_importance` (or keep the
    sorted indices `keep`), mutating the modules in place so subclasses (static 'SAME' padding convs) keep
    their forward. The removed channels' expected output (their mean, see `_expected_activation`) times
    their project weights is a per-output-channel constant, folded into bn2's running mean. Returns the kept
    indices."""
    n = b.hidden
    if keep is None:
        k = max(1, n - int(round(amount * n)))
        keep = channel_importance(b).argsort(descending=True)[:k].sort().values
    removed = torch.ones(n, dtype=torch.bool)
    removed[keep] = False
    with torch.no_grad():
        if removed.any():
            std = b.bn1.weight[removed].abs()
            mean = _expected_activation(b.act, b.bn1.bias[removed], std)
            shift = b.project.weight[:, removed, 0, 0] @ mean  # the constant the removed channels added
            if b.project.bias is not None:
                b.project.bias += shift
            else:
                b.bn2.running_mean -= shift
        _set_param(b.expand, "weight", b.expand.weight[keep])
        b.expand.out_channels = len(keep)
        _cut_bn(b.bn0, keep)
        _set_param(b.depthwise, "weight", b.depthwise.weight[keep])
        b.depthwise.in_channels = b.depthwise.out_channels = b.depthwise.groups = len(keep)
        _cut_bn(b.bn1, keep)
        _set_param(b.project, "weight", b.project.weight[:, keep])
        b.project.in_channels = len(keep)
        for conv in (b.expand, b.depthwise):
            if conv.bias is not None:
                _set_param(conv, "bias", conv.bias[keep])
    return keep


class _Stop(Exception):
    pass


def _grab(enc: nn.Module, module: nn.Module, x: torch.Tensor, output: bool) -> torch.Tensor:
    """The input (or output) of `module` when `enc` runs on `x`; the rest of the forward is skipped."""
    got: list[torch.Tensor] = []

    def hook(m, inp, out):
        got.append(out if output else inp[0])
        raise _Stop

    h = module.register_forward_hook(hook)
    try:
        enc(x)
    except _Stop:
        pass
    finally:
        h.remove()
    return got[0]


def block_statistics(enc: nn.Module, b: InvertedBlock, original: nn.Module, ob: InvertedBlock,
                     batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares statistics of block `b`'s project conv (1x1: a linear map per pixel) on calibration images:
    the Gram matrix of its inputs (all hidden channels plus a constant 1) in `enc`, whose earlier blocks are
    already pruned, and their cross products with the unpruned `original`'s project conv outputs (targets)."""
    n = b.hidden
    gram = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    cross = torch.zeros(n + 1, b.project.out_channels, dtype=torch.float64)
    for x in batches:
        y = _grab(original, ob.project, x, output=True)
        a = _grab(enc, b.project, x, output=False).permute(0, 2, 3, 1).reshape(-1, n).double()
        a = torch.cat([a, torch.ones(len(a), 1, dtype=torch.float64)], 1)
        gram += a.T @ a
        cross += a.T @ y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]).double()
    return gram, cross


def select_and_refit(gram: torch.Tensor, cross: torch.Tensor, out_scale: torch.Tensor, keep_count: int,
                     ridge: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward elimination on the ridge least-squares fit (project input → original project output): drop,
    one at a time, the hidden channel whose removal raises the fit's error least, measured at the block
    output (each output channel weighted by bn2's scale²), and refit the rest (rank-one downdates of the
    inverse Gram, as in Optimal Brain Surgeon). This chooses channels on what the network actually computes on
    the calibration images, and corrects for the error of the earlier pruned blocks (He et al. 2017,
    "Channel pruning"). Returns (sorted kept channels, fitted (kept + 1) x out weights; the last row is the
    bias)."""
    n = gram.shape[0] - 1
    g = gram.clone()
    g[:n, :n] += (ridge * float(gram.diagonal()[:n].mean()) + 1e-12) * torch.eye(n, dtype=g.dtype)
    inv = torch.linalg.inv(g)
    coef = inv @ cross
    w2 = out_scale.double() ** 2
    alive = torch.ones(n + 1, dtype=torch.bool)
    for _ in range(n - keep_count):
        d = inv.diagonal()[:n]
        cost = ((coef[:n] ** 2) * w2).sum(1) / d.clamp_min(1e-30)
        cost[~alive[:n]] = float("inf")
        j = int(cost.argmin())
        col = inv[:, j].clone()
        coef -= torch.outer(col, coef[j]) / col[j]
        inv -= torch.outer(col, col) / col[j]
        alive[j] = False
    keep = alive[:n].nonzero().squeeze(1)
    return keep, coef[torch.cat([keep, torch.tensor([n])])]


def prune_cnn_channels(model: nn.Module, amount: float, images: dict[str, torch.Tensor] | None = None,
                       batch_size: int = 32) -> dict[str, tuple[int, int]]:
    """Channel-prune every inverted-residual block of the model's image encoders by `amount`; where
    `images[key]` (normalised calibration images for that encoder) is given, the channels are chosen and each
    pruned block refitted to the unpruned network on them (`select_and_refit`), block by block in forward
    order; otherwise the lowest `channel_importance` go. An encoder that was pruned gets
    a new `cache_id` (fraction + a hash of the kept channels and refitted weights), so a feature cache never
    returns the unpruned CNN's features for it. Returns {block: (hidden before, after)}."""
    import copy
    import hashlib

    sizes: dict[str, tuple[int, int]] = {}
    encoders = getattr(model, "encoders", {"": model})
    for key, enc in encoders.items():
        blocks = inverted_blocks(enc)
        if not blocks:
            continue
        digest = hashlib.sha1()
        x = (images or {}).get(key)
        was_training = enc.training
        enc.eval()  # BN running statistics: what the features (and the refit targets) are computed with
        original = copy.deepcopy(enc) if x is not None else None
        orig_blocks = inverted_blocks(original) if original is not None else []
        batches = list(x.split(batch_size)) if x is not None else []
        with torch.no_grad():
            for i, b in enumerate(blocks):
                before = b.hidden
                if original is None:
                    keep = prune_block(b, amount)
                else:
                    ob = orig_blocks[i]
                    gram, cross = block_statistics(enc, b, original, ob, batches)
                    scale2 = ob.bn2.weight / torch.sqrt(ob.bn2.running_var + ob.bn2.eps)
                    keep, w = select_and_refit(gram, cross, scale2, max(1, before - int(round(amount * before))))
                    prune_block(b, amount, keep)
                    # the refitted project conv; its bias goes into bn2's running mean (the convs have none)
                    _set_param(b.project, "weight", w[:-1].T.to(b.project.weight.dtype)[:, :, None, None])
                    b.bn2.running_mean = (ob.bn2.running_mean - w[-1].to(ob.bn2.running_mean.dtype)).clone()
                digest.update(f"{b.where}:{keep.tolist()};".encode())
                digest.update(b.project.weight.detach().numpy().tobytes())
                digest.update(b.bn2.running_mean.numpy().tobytes())
                sizes[f"encoders.{key}.{b.where}" if key else b.where] = (before, b.hidden)
        enc.train(was_training)
        if hasattr(enc, "cache_id"):
            enc.cache_id = f"{enc.cache_id}:pruned-{amount:g}-{digest.hexdigest()[:10]}"
    return sizes
