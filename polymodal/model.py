"""Model assembly by composition: encoders (ModuleDict) → fusion → head, as TorchMultimodal's LateFusion."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from polymodal.encoders.tokens import token_features, token_mask
from polymodal.types import Features, Present


class MLPHead(nn.Module):
    """Fused vector → outputs: one hidden layer with dropout (a linear layer when hidden == 0)."""

    def __init__(self, in_dim: int, num_outputs: int, hidden: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        if hidden:
            self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, hidden),
                                     nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_outputs))
        else:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GroupedHead(nn.Module):
    """Fused vector → one logit vector over all classes, factored by class groups (`--label-groups`).

    A group classifier and one MLP head per group (the classes of that group only: closed and open answers
    reason apart, as type-conditioned VQA models do). Output[c] = log p(g(c)) + log p(c | g(c)), so
    softmax(output) = p(group) · p(class | group) and the output is already normalised: cross-entropy,
    probabilities, metrics and ONNX export treat it as ordinary logits. `groups[c]`: class c's group index.
    """

    def __init__(self, in_dim: int, groups: Sequence[int], hidden: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        n_groups = max(groups) + 1
        members = [[c for c, g in enumerate(groups) if g == k] for k in range(n_groups)]
        if any(not m for m in members):
            raise ValueError(f"every group index 0..{n_groups - 1} needs at least one class, got {list(groups)}")
        self.group_head = MLPHead(in_dim, n_groups, hidden, dropout)
        self.heads = nn.ModuleList(MLPHead(in_dim, len(m), hidden, dropout) for m in members)
        # the heads' outputs concatenated group by group; `order` puts them back in class order
        by_group = [c for m in members for c in m]
        order = torch.empty(len(by_group), dtype=torch.long)
        order[torch.tensor(by_group)] = torch.arange(len(by_group))
        self.register_buffer("order", order, persistent=False)  # derived from the config: not in the weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_group = torch.log_softmax(self.group_head(x), dim=-1)
        parts = [torch.log_softmax(h(x), dim=-1) + log_group[:, k:k + 1] for k, h in enumerate(self.heads)]
        return torch.cat(parts, dim=-1)[:, self.order]


class MultiHead(nn.Module):
    """One head per task over the shared fused vector; logits concatenated in task order."""

    def __init__(self, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([h(x) for h in self.heads.values()], dim=-1)


class MultimodalModel(nn.Module):
    """`encoders[key](inputs[key])` → `fusion(features, present, masks)` → `head`.

    Inputs whose frozen encoder output was precomputed arrive in `batch["features"]` and skip the encoder
    (for an encoder with `train_top`, the features are its frozen prefix's output and only its top runs).
    `token_inputs` (key → modality) are fed to the fusion as token sequences (B, T, D) from
    `encoders.tokens.token_features` instead of pooled vectors; their token masks come from the zero padding.
    """

    def __init__(self, encoders: nn.ModuleDict, fusion: nn.Module, head: nn.Module,
                 token_inputs: dict[str, str] | None = None) -> None:
        super().__init__()
        self.encoders = encoders
        self.fusion = fusion
        self.head = head
        self.token_inputs = dict(token_inputs or {})
        self.token_configs: dict[str, dict] = {}  # preprocessing settings token_features needs (text length)

    def encode(self, batch: dict) -> tuple[Features, Present]:
        features: Features = {}
        for key in sorted(self.encoders.keys()):
            if key in batch.get("features", {}):
                f, enc = batch["features"][key].float(), self.encoders[key]
                # a partly fine-tuned encoder's cache holds its frozen prefix's output: its top runs here
                features[key] = enc.from_prefix(f, key in self.token_inputs) if getattr(enc, "train_top", 0) else f
            else:
                if key in self.token_inputs:
                    f = token_features(self.encoders[key], batch["inputs"][key], self.token_inputs[key],
                                       self.token_configs.get(key, {}))
                else:
                    f = self.encoders[key](batch["inputs"][key]).float()
                features[key] = per_row(f, batch, key)
        return features, batch["present"]

    def fuse(self, features: Features, present: Present) -> torch.Tensor:
        """The fusion over encoded features, with token masks for token inputs."""
        masks = {k: token_mask(f) for k, f in features.items() if f.dim() == 3}
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            # drop token positions that are padding in every row (text padded to max_length): attention cost
            # falls with the batch's longest sequence; a traced graph keeps fixed shapes instead
            features, masks = dict(features), dict(masks)
            for k, m in masks.items():
                used = m.any(0).nonzero()
                n = int(used.max()) + 1 if len(used) else 1
                if n < m.shape[1]:
                    features[k], masks[k] = features[k][:, :n], m[:, :n]
        return self.fusion(features, present, masks)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.head(self.fuse(*self.encode(batch)))


def per_row(encoded: torch.Tensor, batch: dict, key: str) -> torch.Tensor:
    """An encoder's output for `batch["inputs"][key]`, one per row: where the Collator stacked the distinct
    images once (`batch["index"][key]`), each row reads its own back."""
    index = batch.get("index", {}).get(key)
    return encoded if index is None else encoded[index]


def move_batch(batch, device: torch.device | str):
    """Recursively move a Batch (nested dicts of tensors) to a device."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_batch(v, device) for k, v in batch.items()}
    return batch


def is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def use_channels_last(model: nn.Module, device: torch.device | str) -> nn.Module:
    """On CUDA, store 4-D (conv) weights channels_last: cuDNN's NHWC kernels for depthwise/pointwise convs
    under bf16 are the fast ones, and a conv with NHWC weights converts its input once (other tensors and
    CPU models are left alone: NCHW is as fast or faster there)."""
    if is_cuda(device) and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
    return model


def compile_encoders(model: MultimodalModel) -> MultimodalModel:
    """`torch.compile` each encoder in place (the fusion and head are too small to gain, and dict inputs
    such as text encoders' token dicts compile per encoder without graph breaks at the model level)."""
    for enc in model.encoders.values():
        enc.compile()
    return model


def prepare_for_inference(model: nn.Module, device: torch.device | str, compile: bool = False) -> nn.Module:
    """eval mode, on `device`, channels_last on CUDA, optionally compiled encoders."""
    model = use_channels_last(model.eval().to(device), device)
    if compile and isinstance(model, MultimodalModel):
        compile_encoders(model)
    elif compile:
        model.compile()
    return model


@contextmanager
def inference_context(device: torch.device | str) -> Iterator[None]:
    """inference_mode plus, on a CUDA GPU with bf16, bf16 autocast: the precision training used
    (`trainer.default_precision`), so cached features and predictions cost what a training forward does."""
    with torch.inference_mode():
        if is_cuda(device) and torch.cuda.is_bf16_supported():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield
