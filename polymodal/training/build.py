"""Model construction: encoders from a schema, the tabular MLP from fitted preprocessing, the classifier /
regressor model and the text generator model, and `rebuild` — the one way every loader turns a run folder
back into (config, preprocessing, model, task)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn
from transformers import AutoTokenizer

from polymodal.data.preprocess import Preprocessor
from polymodal.data.schema import Schema
from polymodal.data.text import BUILTIN, resolve
from polymodal.data.video import AUDIO_TRACK, audio_track_key
from polymodal.encoders import build_encoder
from polymodal.encoders.tokens import TOKEN_MODALITIES
from polymodal.errors import PolymodalError
from polymodal.fusion import FUSIONS, build_fusion
from polymodal.model import GroupedHead, MLPHead, MultiHead, MultimodalModel
from polymodal.tasks import MultiTask, task_from_prep
from polymodal.tasks.generation import GenerationModel, GenerationTask, TextDecoder, Vocabulary, init_word_embeddings
from polymodal.training import artifacts
from polymodal.training.config import FitConfig, GenerationConfig, RunSettings
from polymodal.types import TABULAR

TABLE_RUN, GENERATION_RUN = "table", "generation"  # the model kinds a run folder's config.json names ("kind")


def build_encoders(schema: Schema, config: RunSettings, architecture_dirs: dict[str, str] | None = None,
                   ) -> tuple[dict[str, nn.Module], dict[str, dict]]:
    """One encoder per media/text column (the tabular MLP is built after preprocessing knows its sizes).

    `architecture_dirs[column]`: a saved Hugging Face config to build that text encoder from, without
    downloading or reading pretrained weights (a run folder's weights are loaded afterwards).
    """
    encoders, pre_cfg = {}, {}
    for col, mod in schema.columns.items():
        if mod in ("image", "text", "audio", "video", "timeseries"):
            opts = dict(config.encoder_opts.get(mod, {}))
            name = config.encoders.get(mod)
            if mod == "text" and architecture_dirs and col in architecture_dirs:
                name, opts["weights"] = architecture_dirs[col], False
                opts.pop("num_layers", None)  # the saved config already has the kept layer count
            if mod == "timeseries":
                opts.setdefault("in_channels", schema.series_channels.get(col, 1))
            if mod == "video" and config.frozen.get("video") is False:  # --finetune video: the frame backbone too
                opts.setdefault("finetune_backbone", True)
            enc = build_encoder(mod, name, **opts)
            encoders[col] = enc
            pre_cfg[mod] = enc.preprocess_config()
            if getattr(enc, "audio_track", False):  # a video's sound: its own audio input (see data/video.py)
                track = build_encoder("audio", config.encoders.get("audio"), **config.encoder_opts.get("audio", {}))
                encoders[audio_track_key(col)] = track
                pre_cfg[AUDIO_TRACK] = track.preprocess_config()
    return encoders, pre_cfg


def build_tabular_encoder(prep: Preprocessor, config: RunSettings) -> nn.Module:
    spec = prep.inputs[TABULAR].config
    return build_encoder("tabular", config.encoders.get("tabular"), n_numeric=len(spec["numeric"]),
                         cardinalities=[len(prep.vocab[c]) for c in spec["categorical"]],
                         **config.encoder_opts.get("tabular", {}))


def is_frozen(modality: str, encoder: nn.Module, config: RunSettings) -> bool:
    """Frozen unless the config says otherwise: pretrained encoders are, trained-from-scratch ones are not; an
    encoder with an adapter (LoRA, BitFit) trains it."""
    if getattr(encoder, "adapter", None):
        return False
    return bool(config.frozen.get(modality, getattr(encoder, "pretrained", False)))


def freeze_frozen(encoders: dict[str, nn.Module], prep: Preprocessor, config: RunSettings) -> None:
    for key, enc in encoders.items():
        if prep.inputs[key].modality != TABULAR and is_frozen(prep.inputs[key].modality, enc, config):
            enc.freeze()


def frozen_keys(model: nn.Module, prep: Preprocessor, config: RunSettings) -> list[str]:
    """Inputs whose encoder is frozen: their features come from the feature cache."""
    return [key for key, enc in model.encoders.items()
            if prep.inputs[key].modality != TABULAR and is_frozen(prep.inputs[key].modality, enc, config)]


def token_inputs(config: FitConfig, prep: Preprocessor | None) -> dict[str, str]:
    """Inputs fed to the fusion as token sequences: image/text/audio ones, when `config.tokens` (or, by
    default, when the fusion accepts tokens: transformer, film, ban, coattention)."""
    accepts = getattr(FUSIONS.get(config.fusion), "accepts_tokens", False)
    use = config.tokens if config.tokens is not None else accepts
    if use and not accepts:
        token_fusions = ", ".join(n for n, f in FUSIONS.items() if getattr(f, "accepts_tokens", False))
        raise PolymodalError(f"fusion {config.fusion!r} takes pooled features; token inputs need one of "
                             f"{token_fusions}")
    if not use or prep is None:
        return {}
    return {k: s.modality for k, s in prep.inputs.items() if s.modality in TOKEN_MODALITIES}


def assemble_model(encoders: dict[str, nn.Module], task, config: FitConfig,
                   prep: Preprocessor | None = None) -> MultimodalModel:
    """encoders → fusion → head (one MLP head, a head per label for multi-task, none for logit fusions)."""
    tokens = token_inputs(config, prep)
    in_dims = {k: (e.token_dim if k in tokens else e.out_dim) for k, e in encoders.items()}
    opts = dict(config.fusion_opts)
    if tokens and config.fusion == "film":
        opts.setdefault("token_keys", sorted(tokens))
    fusion = build_fusion(config.fusion, in_dims, num_outputs=task.num_outputs, dropout=config.dropout, **opts)
    if config.label_groups:
        if getattr(fusion, "produces_logits", False):
            raise PolymodalError(f"--label-groups (label_groups) builds its own heads; fusion {config.fusion!r} "
                                 "outputs logits itself: choose a fusion with a head (concat, ban, ...)")
        head: nn.Module = GroupedHead(fusion.out_dim, class_groups(task.classes, config.label_group_map),
                                      config.head_hidden, config.dropout)
    elif getattr(fusion, "produces_logits", False):
        head = nn.Identity()
    elif isinstance(task, MultiTask):
        head = MultiHead({n: MLPHead(fusion.out_dim, t.num_outputs, config.head_hidden, config.dropout)
                          for n, t in task.tasks.items()})
    else:
        head = MLPHead(fusion.out_dim, task.num_outputs, config.head_hidden, config.dropout)
    model = MultimodalModel(nn.ModuleDict(encoders), fusion, head, tokens)
    model.token_configs = {k: dict(prep.inputs[k].config) for k in tokens}
    return model


def class_groups(classes: list[str], group_of: dict[str, str]) -> list[int]:
    """Each class's group index (groups in sorted order) from the class → group map fit recorded."""
    missing = [c for c in classes if c not in group_of]
    if missing:
        raise PolymodalError(f"--label-groups: no group recorded for class(es) {missing[:5]} (the run's "
                             "label_group_map does not match its classes)")
    names = sorted({group_of[c] for c in classes})
    return [names.index(group_of[c]) for c in classes]


def build_generation_model(encoders: dict[str, nn.Module], prep: Preprocessor, config: GenerationConfig,
                           vocab: Vocabulary, init_embeddings: bool) -> GenerationModel:
    """encoders → per-input projections → memory tokens → text decoder (tasks/generation.py)."""
    tokens = {k: s.modality for k, s in prep.inputs.items() if s.modality in TOKEN_MODALITIES} \
        if config.tokens is not False else {}
    in_dims = {k: (e.token_dim if k in tokens else e.out_dim) for k, e in encoders.items()}
    decoder = TextDecoder(len(vocab), config.d_model, config.layers, config.heads, config.dropout,
                          config.max_target_tokens + 2, config.embed_dim)
    model = GenerationModel(nn.ModuleDict(encoders), in_dims, decoder, tokens)
    model.token_configs = {k: dict(prep.inputs[k].config) for k in tokens}
    if init_embeddings:
        init_word_embeddings(decoder, vocab, config.decoder_tokenizer)
    return model


def embedding_width(config: GenerationConfig) -> int:
    """The text encoder's hidden size when its word embeddings initialise the decoder, else d_model."""
    if config.init_embeddings and config.decoder_tokenizer in BUILTIN:
        cfg = json.loads((Path(resolve(config.decoder_tokenizer)) / "config.json").read_text())
        return int(cfg["hidden_size"])
    return config.d_model


@dataclass
class Rebuilt:
    """A run folder turned back into its parts (weights loaded unless `rebuild(..., weights=False)`)."""

    kind: str  # TABLE_RUN | GENERATION_RUN
    config: RunSettings
    prep: Preprocessor
    model: nn.Module
    task: object
    model_id: str | None
    metrics: dict = field(default_factory=dict)
    config_json: dict = field(default_factory=dict)


def rebuild(path: str | Path, device: str | None = None, weights: bool = True) -> Rebuilt:
    """The model a run folder describes, offline (tokenizers and architectures come from the folder).

    `weights=False` returns the architecture only, for loaders whose artefact is not model.safetensors (a
    compressed folder re-sizes pruned layers or re-applies int8 before loading its own state)."""
    path = Path(path)
    config_json, prep = artifacts.read_run(path, require_weights=weights)
    kind = config_json.get("kind", TABLE_RUN)
    config_cls = GenerationConfig if kind == GENERATION_RUN else FitConfig
    try:
        config = config_cls.from_dict(config_json["fit"])
    except (TypeError, ValueError) as exc:  # a value of the wrong type; bad choices are PolymodalErrors already
        raise artifacts.damaged(path / artifacts.CONFIG, f"{type(exc).__name__}: {exc}") from None
    arch = {k: str(path / "tokenizers" / k) for k in prep.inputs
            if (path / "tokenizers" / k / "config.json").exists()}
    encoders, _ = build_encoders(prep.schema, config, arch)
    if TABULAR in prep.inputs:
        encoders[TABULAR] = build_tabular_encoder(prep, config)
    if kind == GENERATION_RUN:
        decoder_tokenizer = AutoTokenizer.from_pretrained(str(path / artifacts.DECODER_TOKENIZER))
        vocab = Vocabulary(decoder_tokenizer, config_json["vocabulary"])
        task = GenerationTask(vocab, config.label_smoothing)
        model = build_generation_model(encoders, prep, config, vocab, init_embeddings=False)
    else:
        task = task_from_prep(prep, config)
        model = assemble_model(encoders, task, config, prep)
    for key, enc in model.encoders.items():
        if key != TABULAR:
            enc.freeze()  # a loaded model predicts: every encoder in eval mode, nothing trains
        # A pruned encoder was saved under a suffixed cache_id (e.g. ":pruned-0.5-<hash>"); the rebuilt one has
        # the base id, under which a feature cache holds the unpruned encoder's features: take the saved one.
        saved = config_json.get("inputs", {}).get(key, {}).get("cache_id", "")
        if hasattr(enc, "cache_id") and saved.startswith(f"{enc.cache_id}:"):
            enc.cache_id = saved
    if weights:
        artifacts.check_weights(path / artifacts.WEIGHTS, config_json.get("model_id"))
        artifacts.load_weights(model, path / artifacts.WEIGHTS)
    model.eval().to(device or "cpu")
    metrics_path = path / artifacts.METRICS
    metrics = artifacts.read_json(metrics_path) if metrics_path.exists() else {}
    return Rebuilt(kind, config, prep, model, task, config_json.get("model_id"), metrics, config_json)
