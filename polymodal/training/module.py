"""LightningModule wrapping a MultimodalModel and a task: loss, optimiser, schedule, validation metrics."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from polymodal.model import compile_encoders, use_channels_last


class FitModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, task, lr: float = 1e-3, weight_decay: float = 1e-2,
                 warmup_ratio: float = 0.05, encoder_lr_scale: float = 0.1, compile: bool = False,
                 l1: float = 0.0, mixup: float = 0.0) -> None:
        super().__init__()
        self.model, self.task = model, task  # a MultiTask is an nn.Module: its learned loss weights train too
        self.l1, self.mixup = l1, mixup
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_ratio, self.encoder_lr_scale = warmup_ratio, encoder_lr_scale
        self.compile_encoders = compile
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        # checkpoints leave out frozen encoder weights (see on_save_checkpoint): resume must accept that
        self.strict_loading = False
        self.val_metrics: dict[str, float] = {}

    def setup(self, stage: str) -> None:
        # Runs before Lightning moves the model to its device and builds the optimiser, so the optimiser
        # state is created in the same (channels_last) layout as the weights.
        use_channels_last(self.model, self.trainer.strategy.root_device)
        if self.compile_encoders and not getattr(self, "_compiled", False):
            compile_encoders(self.model)
            self._compiled = True

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.mixup > 0:
            loss = self._mixup_loss(batch)
        else:
            loss = self.task.loss(self.model(batch), batch["target"])
        if self.l1 > 0:  # on the head's weight matrices (not biases/norms): sparse read-out of the fused vector
            loss = loss + self.l1 * sum(p.abs().sum() for n, p in self.model.head.named_parameters()
                                        if p.ndim > 1 and p.requires_grad)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(batch["target"]))
        return loss

    def _mixup_loss(self, batch: dict) -> torch.Tensor:
        """mixup (Zhang et al. 2018): a Beta(α, α) blend of each row with a random other row, the loss blended
        alike. Image/audio inputs whose encoder trains are mixed as pixels/spectrograms; cached (frozen) and
        text features are mixed after their encoder (manifold mixup, Verma et al. 2019) — token ids cannot be
        blended. Draws come from the global RNG that EpochSeed reseeds, so resumed runs repeat them."""
        n = len(batch["target"])
        lam = float(torch.distributions.Beta(self.mixup, self.mixup).sample())
        perm = torch.randperm(n).to(batch["target"].device)
        mixed = {key: lam * x + (1 - lam) * x[perm] for key, x in batch["inputs"].items()
                 if isinstance(x, torch.Tensor) and x.is_floating_point() and x.ndim >= 3}  # pixels, spectrograms
        features, present = self.model.encode({**batch, "inputs": {**batch["inputs"], **mixed}})
        features = {k: f if k in mixed else lam * f + (1 - lam) * f[perm] for k, f in features.items()}
        present = {k: p | p[perm] for k, p in present.items()}
        logits = self.model.head(self.model.fuse(features, present))
        y = batch["target"]
        return lam * self.task.loss(logits, y) + (1 - lam) * self.task.loss(logits, y[perm])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.model(batch)
        loss = self.task.loss(logits, batch["target"])
        # sync_dist: under DDP every rank must see the same monitored value (early stopping, best checkpoint)
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["target"]),
                 sync_dist=True)
        probs = self.task.probabilities(logits)
        # kept on the device: one transfer per epoch instead of a host sync per validation batch
        self._val.append((probs.detach().float(), batch["target"], batch["row"]))

    def _gathered_validation(self) -> tuple[np.ndarray, np.ndarray]:
        """This epoch's validation outputs; under DDP, every rank's shard gathered and de-duplicated by
        table row (distributed samplers pad shards to equal length by repeating rows)."""
        probs, target, rows = (torch.cat([v[i] for v in self._val]) for i in range(3))
        self._val.clear()
        if self.trainer.world_size > 1:
            probs, target, rows = (self.all_gather(t).flatten(0, 1) for t in (probs, target, rows))
            _, first = np.unique(rows.cpu().numpy(), return_index=True)
            keep = torch.as_tensor(first, device=probs.device)
            probs, target = probs[keep], target[keep]
        return probs.cpu().numpy(), target.cpu().numpy()

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        probs, target = self._gathered_validation()
        self.val_metrics = self.task.metrics(probs, target)
        name = self.task.monitor[0]
        for k, v in self.val_metrics.items():
            self.log(f"val_{k}", v, prog_bar=(k == name))

    def configure_optimizers(self):
        extra = list(self.task.parameters()) if isinstance(self.task, torch.nn.Module) else []  # learned loss weights
        groups = param_groups(self.model, self.lr, self.encoder_lr_scale, extra)
        # fused AdamW (one kernel for all tensors) on CUDA; not under fp16's GradScaler, whose unscaling
        # Lightning must do before clipping (bf16 and fp32 have no scaler)
        fused = self.device.type == "cuda" and str(self.trainer.precision) not in ("16-mixed", "16")
        opt = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay, fused=fused)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = get_cosine_schedule_with_warmup(opt, int(self.warmup_ratio * total), total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning's mixed-precision plugin refuses to clip for any optimiser that unscales inside step()
        # (fused AdamW): a RuntimeError at the first bf16 step. That matters only with fp16's GradScaler;
        # bf16/fp32 gradients are unscaled, so clip by norm here (foreach kernels, no host sync).
        if gradient_clip_val:
            if gradient_clip_algorithm not in (None, "norm"):
                raise ValueError(f"unsupported gradient_clip_algorithm {gradient_clip_algorithm!r}")
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Frozen encoder weights never change: keep them out of every checkpoint (smaller, faster writes).
        frozen = {n for n, p in self.named_parameters() if not p.requires_grad}
        frozen |= {n for n, _ in self.named_buffers() if n.startswith("model.encoders.")
                   and not any(p.requires_grad for p in self.model.encoders[n.split(".")[2]].parameters())}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}

    def load_trained_state(self, path: str) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected:
            raise RuntimeError(f"checkpoint {path} has unexpected keys: {unexpected[:5]}")


def param_groups(model, lr: float, encoder_lr_scale: float, extra: list | None = None) -> list[dict]:
    """AdamW groups: trainable parameters of pretrained encoders at `lr * encoder_lr_scale` (fine-tuned
    pretrained towers learn slower than the freshly initialised fusion and head), the rest (and `extra`,
    trainable ones only) at `lr`. An encoder with `layer_decay` d (a fine-tuned top): its top-most layer at
    `lr * encoder_lr_scale`, the layer below at d times that, and so on down (one group per layer)."""
    depth = _layer_depths(model)
    enc, rest = [], []
    decayed: dict[tuple[str, int], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_pretrained_encoder = name.startswith("encoders.") and getattr(
            model.encoders[name.split(".")[1]], "pretrained", False)
        if is_pretrained_encoder and id(p) in depth:
            decayed.setdefault((name.split(".")[1], depth[id(p)][1]), []).append(p)
        else:
            (enc if is_pretrained_encoder else rest).append(p)
    rest += [p for p in extra or [] if p.requires_grad]
    groups = [{"params": rest, "lr": lr}]
    if enc:
        groups.append({"params": enc, "lr": lr * encoder_lr_scale})
    for (key, d), params in sorted(decayed.items()):
        groups.append({"params": params, "lr": lr * encoder_lr_scale * model.encoders[key].layer_decay ** d})
    return groups


def _layer_depths(model) -> dict[int, tuple[str, int]]:
    """id(parameter) → (encoder key, layers below the top-most one) for encoders with layer-wise lr decay."""
    depth: dict[int, tuple[str, int]] = {}
    for key, enc in getattr(model, "encoders", {}).items():
        if getattr(enc, "layer_decay", 0) and getattr(enc, "train_top", 0):
            for d, mods in enumerate(reversed(enc.top_layers())):
                for m in mods:
                    for p in m.parameters():
                        depth.setdefault(id(p), (key, d))
    return depth
