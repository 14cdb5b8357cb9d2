"""What defines a run: `RunSettings` (how and where it trains), `FitConfig` (classifiers, regressors, multi-task)
and `GenerationConfig` (text generators). Each validates its own values when built, from Python as from the
CLI, with one message per setting; config.json stores them so a run folder rebuilds itself."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from polymodal.errors import PolymodalError
from polymodal.tasks.generation import GENERATION_TASKS, DecodeConfig

# setting → (the CLI flag that sets it, its allowed values); None stands for "not set" where allowed
CHOICES: dict[str, tuple[str, tuple]] = {
    "on_bad_rows": ("--on-bad-rows", ("error", "skip")),
    "loss": ("--loss", ("cross_entropy", "focal")),
    "sampler": ("--sampler", ("shuffle", "weighted")),
    "loss_weighting": ("--loss-weighting", ("uniform", "fixed", "uncertainty")),
    "tune_threshold": ("--tune-threshold", (None, "f1", "balanced_accuracy")),
    "class_weighting": ("--class-weighting", (None, True, False)),
    "task": ("--task", GENERATION_TASKS),
    "vocab": ("--vocab", ("train", "full")),
}


def check_choices(config) -> None:
    """Every CHOICES setting `config` has must hold an allowed value (a typo such as sampler="weigthed" would
    otherwise fall through to the default behaviour silently)."""
    names = {f.name for f in dataclasses.fields(config)}
    for name, (flag, allowed) in CHOICES.items():
        value = getattr(config, name, None)
        if name in names and value not in allowed:
            shown = ", ".join(str(a) for a in allowed if a is not None)  # None (unset) is allowed but not a flag value
            raise PolymodalError(f"{flag} must be one of {shown}, not {value!r}")


@dataclass(kw_only=True)
class RunSettings:
    """How and where a run trains (data handling, cache, hardware, limits); shared by FitConfig and
    GenerationConfig, and saved with them in config.json."""

    augment: bool = True
    cached_views: int = 0  # augmented views per cached image: training draws one of them (or the plain image)
    on_bad_rows: str = "error"  # "error" | "skip"
    cache_dir: str | None = None
    precision: str | None = None
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    num_workers: int = 0
    time_limit: float | None = None
    progress: bool = True
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    max_epochs: int = 20
    patience: int = 5
    seed: int = 0
    column_types: dict[str, str] = field(default_factory=dict)
    encoders: dict[str, str] = field(default_factory=dict)  # modality → encoder name (defaults otherwise)
    encoder_opts: dict[str, dict] = field(default_factory=dict)  # modality → builder options
    frozen: dict[str, bool] = field(default_factory=dict)  # modality → frozen? (default: pretrained ones)

    def __post_init__(self) -> None:
        check_choices(self)
        views = self.cached_views
        if isinstance(views, bool) or not isinstance(views, int) or not 0 <= views <= 32:
            raise PolymodalError(f"--cached-views must be an integer from 0 to 32, not {self.cached_views!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        """The settings in `d` this class knows (unknown keys, e.g. from other versions, are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def labels(self) -> list[str]:
        label = self.label
        return [label] if isinstance(label, str) else list(label)


@dataclass(kw_only=True)
class FitConfig(RunSettings):
    """Everything that defines a classifier / regressor / multi-task run."""

    label: str | list[str]  # several labels: multi-task (one shared trunk, a head per label)
    problem_type: str | dict | None = None  # multi-task: {label: type} (missing ones inferred)
    fusion: str = "concat"
    fusion_opts: dict = field(default_factory=dict)
    tokens: bool | None = None  # image/text/audio as token sequences; None: when the fusion takes tokens
    head_hidden: int = 256
    dropout: float = 0.2
    valid_fraction: float = 0.2
    group_column: str | None = None  # rows sharing a value stay on one side of the validation split; None: group
    # by an image/audio/video column whose values repeat across rows; "none": split by row (data/split.row_groups)
    class_weighting: bool | None = None  # None (auto) = off: fit optimises accuracy (tasks.task_from_prep)
    label_smoothing: float = 0.0
    loss: str = "cross_entropy"  # classification loss: cross_entropy | focal
    focal_gamma: float = 2.0
    loss_weighting: str = "uniform"  # multi-task: uniform | fixed (task_weights) | uncertainty (learned)
    task_weights: dict[str, float] | None = None
    sampler: str = "shuffle"  # shuffle | weighted (resample rows by inverse class frequency of the first label)
    tune_threshold: str | None = None  # binary labels: pick the decision threshold maximising f1|balanced_accuracy
    decision_threshold: dict[str, float] = field(default_factory=dict)  # label → tuned threshold (set by fit)
    mixup: float = 0.0  # Beta(α, α) mixup of per-modality encoder inputs/features and targets; 0 = off
    text_augment: float = 0.0  # per-word drop/swap probability for text inputs whose encoder trains
    l1: float = 0.0  # L1 penalty on the head's weights
    compile: bool = False  # torch.compile each trained encoder (worth it for fine-tuning on a GPU)
    length_bucketing: bool = True  # trained text encoders: batch rows of similar text length (less padding)
    group_batches: bool = False  # training batches hold whole groups (group_column, or the repeated media
    # column): a fine-tuned image top then runs once per image, not once per row (callbacks.group_together)
    average_epochs: int = 0  # K > 0: keep the mean trainable weights of the last K completed epochs, not the
    # best-validation checkpoint (early stopping still stops; training/averaging.py)
    stream: bool = False  # read the training table as Parquet/WebDataset shards, chunk by chunk (fit_stream)
    chunk_rows: int = 10_000  # rows per chunk when streaming
    label_groups: str | None = None  # a training-only column partitioning the classes (VQA: closed / open): a
    # group classifier and one head per group, output log p(group) + log p(class | group) (model.GroupedHead)
    label_group_map: dict[str, str] = field(default_factory=dict)  # class → its group (set by fit, kept in config)

    def __post_init__(self) -> None:
        super().__post_init__()
        k = self.average_epochs
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise PolymodalError(f"--average-epochs must be a whole number of epochs, 0 (off) or more, not {k!r}")
        if self.label_groups is not None:
            if not isinstance(self.label_groups, str) or not self.label_groups:
                raise PolymodalError(f"--label-groups (label_groups) must name one column, not {self.label_groups!r}")
            if self.label_groups in self.labels or len(self.labels) > 1:
                raise PolymodalError("--label-groups (label_groups) needs one classification label and another "
                                     f"column that groups its classes; got label {self.label!r} and "
                                     f"{self.label_groups!r}")


@dataclass(kw_only=True)
class GenerationConfig(RunSettings):
    """Everything that defines a text-generation run (task caption | vqa-open)."""

    label: str
    task: str = "caption"  # caption | vqa-open
    tokens: bool | None = None  # image/text/audio inputs as token sequences in the memory (the default,
    # None or True); False: one pooled vector per input
    d_model: int = 256
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    decoder_tokenizer: str = "minilm-l6"  # the text encoder's tokenizer (an alias, hub id or directory)
    vocab: str = "train"  # train: tokens the training texts use | full: the tokenizer's whole vocabulary
    init_embeddings: bool = True  # start the tied embedding from the text encoder's word embeddings
    embed_dim: int | None = None  # embedding width (set by fit: the text encoder's when initialised from it)
    max_target_tokens: int = 32
    label_smoothing: float = 0.0
    decode: dict = field(default_factory=dict)  # DecodeConfig settings for validation/evaluate/predict
    valid_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.task not in GENERATION_TASKS:
            raise PolymodalError(f"task must be one of {', '.join(GENERATION_TASKS)}, not {self.task!r}")
        super().__post_init__()
        if self.d_model % self.heads:
            raise PolymodalError(f"d_model ({self.d_model}) must be a multiple of heads ({self.heads})")
        DecodeConfig.from_dict(self.decode)  # fail now, not after training

    @classmethod
    def from_options(cls, label: str | list[str], task: str, options: dict) -> GenerationConfig:
        """Options as MultimodalPredictor/`polymodal fit` pass them: classification-only settings are
        accepted at their defaults (the CLI passes them all) and refused otherwise."""
        if not isinstance(label, str):
            if len(label) != 1:
                raise PolymodalError(f"task {task!r} generates one text column; got labels {list(label)}")
            label = label[0]
        names = {f.name for f in dataclasses.fields(cls)}
        defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                    for f in dataclasses.fields(FitConfig)}
        kept = {}
        for k, v in options.items():
            if k in names:
                kept[k] = v
            elif k in defaults and v == defaults[k]:
                continue
            else:
                raise PolymodalError(f"setting {k}={v!r} does not apply to task {task!r}")
        return cls(label=label, task=task, **kept)


def replace_config(config, overrides: dict, what: str):
    """`config` with `overrides` (fit(**overrides)); a name the config does not have is a clear error, not a
    TypeError from dataclasses.replace (a typo, or a setting such as stream that this kind of run lacks)."""
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(k for k in overrides if k not in names)
    if unknown:
        raise PolymodalError(f"{', '.join(unknown)}: not a setting of {what}; its settings are "
                             f"{', '.join(sorted(names))}")
    return dataclasses.replace(config, **overrides)
