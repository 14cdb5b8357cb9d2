"""Knowledge distillation from a trained predictor (teacher) into a smaller student.

Loss = alpha · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − alpha) · task loss (hard labels)
       + beta · MSE(proj(student fused vector), teacher fused vector)   (Hinton et al. 2015; FitNets 2015).
Teacher logits and fused vectors are computed once per training row (table order) and looked up by the
batch's row ids, so the teacher never runs inside the training loop. Multi-label students match the
teacher's sigmoid probabilities (BCE), regressors its predictions (MSE).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from polymodal.compress.finetune import cached_features, clean_table, score, train_loop
from polymodal.data.preprocess import Preprocessor
from polymodal.errors import PolymodalError
from polymodal.model import MultimodalModel, move_batch
from polymodal.problem_types import MULTILABEL, ONE_CLASS_PER_ROW
from polymodal.training.build import assemble_model, build_encoders, build_tabular_encoder
from polymodal.training.config import FitConfig
from polymodal.training.pipeline import make_loader
from polymodal.types import TABULAR

PRETRAINED_IMAGE = ("efficientnet-lite0", "mobilenet_v2")


STUDENTS = ("fast", "small", "tiny")


def student_preset(teacher_config: FitConfig, teacher_prep: Preprocessor, student: str = "fast") -> dict:
    """FitConfig overrides for a student.

    "fast": MobileNetV2 at half the teacher's image side (224 → 112 px) for a pretrained teacher CNN
    (small-cnn teachers: small-cnn at half the side and width), half the text layers (MiniLM 6 → 3) with
    the text tower trained during distillation, half the head. Measured on VQA-RAD closed (batch 1, one
    thread): EfficientNet-Lite0 at 224 px costs 29 ms, MobileNetV2 at 112 px 6 ms (at batch 1 an eager
    CNN's time is mostly per-layer overhead, so fewer, simpler layers matter more than fewer pixels);
    MiniLM 6 / 3 / 1 layers 10.5 / 5.1 / 1.4 ms. Frozen shallow text towers lost 4-6 points there (the
    question carries most of the answer); training the 3-layer tower to match the teacher lost 0.7-1.1.
    "small": same image family at ~4/7 of the side (224 → 128 px), a third of the text layers
    (MiniLM 6 → 2), frozen, half the head.
    "tiny": small-cnn images at 64 px (trained from scratch), one text layer, a quarter of the head."""
    if student not in STUDENTS:
        raise PolymodalError(f"unknown student preset '{student}': use one of {', '.join(STUDENTS)}")
    encoders = dict(teacher_config.encoders)
    opts = copy.deepcopy(teacher_config.encoder_opts)
    mods = {s.modality: s for s in teacher_prep.inputs.values()}
    if "image" in mods:
        size = int(mods["image"].config.get("image_size", 224))
        name = encoders.get("image", "efficientnet-lite0")
        if student == "tiny":
            encoders["image"], opts["image"] = "small-cnn", {"image_size": min(size, 64)}
        elif name == "small-cnn":
            opts["image"] = {**opts.get("image", {}), "image_size": max(8, size // 2),
                             "out_dim": max(16, int(opts.get("image", {}).get("out_dim", 128)) // 2)}
        elif student == "fast":
            encoders["image"] = "mobilenet_v2"
            opts["image"] = {"image_size": max(64, round(size / 2 / 16) * 16)}
        else:
            opts["image"] = {**opts.get("image", {}), "image_size": max(64, round(size * 4 / 7 / 32) * 32)}
    frozen = dict(teacher_config.frozen)
    if "text" in mods:
        layers = int(opts.get("text", {}).get("num_layers") or 6)
        kept = {"tiny": 1, "fast": max(1, layers // 2)}.get(student, max(1, layers // 3))
        opts["text"] = {**opts.get("text", {}), "num_layers": kept}
        if student == "fast":
            frozen["text"] = False
    div = 4 if student == "tiny" else 2
    return {"encoders": encoders, "encoder_opts": opts, "frozen": frozen,
            "head_hidden": max(16, teacher_config.head_hidden // div),
            "fusion_opts": {**teacher_config.fusion_opts,
                            **({"hidden": max(16, teacher_config.fusion_opts.get("hidden", 256) // div)}
                               if teacher_config.fusion in ("concat",) else {})}}


def build_student(teacher, overrides: dict) -> tuple[MultimodalModel, Preprocessor, FitConfig]:
    """A fresh student model with the teacher's schema, label encoding and scalers."""
    config = dataclasses.replace(teacher.config, **overrides)
    prep = Preprocessor.from_dict(copy.deepcopy(teacher.prep.to_dict()))
    encoders, pre_cfg = build_encoders(prep.schema, config)
    for key in encoders:
        prep.inputs[key].config.update(pre_cfg[prep.inputs[key].modality])
    if TABULAR in prep.inputs:
        encoders[TABULAR] = build_tabular_encoder(prep, config)
    for key, enc in encoders.items():
        mod = prep.inputs[key].modality
        if mod != TABULAR and config.frozen.get(mod, getattr(enc, "pretrained", False)):
            enc.freeze()
    return assemble_model(encoders, teacher.task, config), prep, config


@torch.no_grad()
def teacher_outputs(teacher, df: pd.DataFrame, log=print) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher logits and fused vectors for every row of `df` (index 0..n-1), in row order."""
    model = teacher.model.eval()
    feats = cached_features(model, teacher.prep, teacher.config, df, log)
    loader = make_loader(df, teacher.prep, feats, dataclasses.replace(teacher.config, num_workers=0), train=False)
    n = len(df)
    logits = torch.zeros(n, teacher.task.num_outputs)
    fused = None
    for batch in loader:
        batch = move_batch(batch, "cpu")
        z = model.fuse(*model.encode(batch))
        out = model.head(z)
        if fused is None and not getattr(model.fusion, "produces_logits", False):
            fused = torch.zeros(n, z.shape[-1])
        logits[batch["row"]] = out.float()
        if fused is not None:
            fused[batch["row"]] = z.float()
    return logits, fused


@dataclass
class DistillLoss:
    task: object
    teacher_logits: torch.Tensor
    teacher_fused: torch.Tensor | None
    proj: nn.Module | None
    temperature: float = 4.0
    alpha: float = 0.7
    beta: float = 1.0

    def __call__(self, model: MultimodalModel, batch: dict):
        z = model.fuse(*model.encode(batch))
        out = model.head(z).float()
        t = self.teacher_logits[batch["row"]]
        ptype = self.task.problem_type
        if ptype in ONE_CLASS_PER_ROW:
            T = self.temperature
            soft = F.kl_div(F.log_softmax(out / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T
        elif ptype == MULTILABEL:
            soft = F.binary_cross_entropy_with_logits(out, torch.sigmoid(t))
        else:
            soft = F.mse_loss(out, t)
        hard = self.task.loss(out, batch["target"])
        loss = self.alpha * soft + (1 - self.alpha) * hard
        parts = {"soft": soft.item(), "hard": hard.item()}
        if self.proj is not None and self.teacher_fused is not None and self.beta > 0:
            feat = F.mse_loss(self.proj(z.float()), self.teacher_fused[batch["row"]])
            loss = loss + self.beta * feat
            parts["feature"] = feat.item()
        return loss, parts


@dataclass
class DistillResult:
    model: MultimodalModel
    prep: Preprocessor
    config: FitConfig
    history: pd.DataFrame
    valid_metrics: dict


def distill(teacher, train_df: pd.DataFrame, valid_df: pd.DataFrame | None = None, student: str = "fast",
            overrides: dict | None = None, epochs: int = 15, lr: float = 2e-3, temperature: float = 4.0,
            alpha: float = 0.7, beta: float = 1.0, log=print) -> DistillResult:
    """Train a student (preset + `overrides`, any FitConfig fields) to mimic `teacher` on `train_df`."""
    train_df = clean_table(train_df, teacher.prep)
    valid_df = clean_table(valid_df, teacher.prep) if valid_df is not None else None
    t_logits, t_fused = teacher_outputs(teacher, train_df, log)
    cfg = {**student_preset(teacher.config, teacher.prep, student), **(overrides or {})}
    model, prep, config = build_student(teacher, cfg)
    proj = None
    if t_fused is not None and not getattr(model.fusion, "produces_logits", False):
        proj = nn.Linear(model.fusion.out_dim, t_fused.shape[1])
    loss = DistillLoss(teacher.task, t_logits, t_fused, proj, temperature, alpha, beta)
    history = train_loop(model, teacher.task, prep, config, train_df, valid_df, loss, epochs, lr,
                         list(proj.parameters()) if proj is not None else None, log)
    metrics = {}
    if valid_df is not None:
        metrics = score(model, teacher.task, prep, config, valid_df,
                        cached_features(model, prep, config, valid_df, log))
    return DistillResult(model.eval(), prep, config, history, metrics)

