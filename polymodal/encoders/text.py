"""Text encoders (Hugging Face transformers). Input: {"input_ids": (B, L), "attention_mask": (B, L)} long.

Names resolve as the tokenizers do (`data/text.py`): "minilm-l6" is the packaged all-MiniLM-L6-v2; any other
name is passed to `AutoModel.from_pretrained` (hub id or local directory).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from polymodal.data.text import DEFAULT_TEXT, resolve
from polymodal.encoders.base import Encoder, MissingDependencyError, read_adapted
from polymodal.encoders.tokens import token_mask
from polymodal.errors import PolymodalError


def masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of `hidden` (B, L, D) over positions where `mask` (B, L) is 1 — all-MiniLM's pooling."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _layer_stack(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(parent, attribute, ModuleList) of the transformer's layer stack: the ModuleList as long as the config
    says (BertModel.encoder.layer, etc.), found by length so the same code serves BERT, RoBERTa, DistilBERT
    (transformer.layer) and others."""
    total = model.config.num_hidden_layers
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == total:
                return parent, child_name, child
    raise ValueError(f"cannot find the {total}-layer stack of {type(model).__name__}")


def _keep_first_layers(model: nn.Module, n: int) -> None:
    """Cut the transformer stack to its first `n` layers (e.g. the start of a distilled student)."""
    total = model.config.num_hidden_layers
    if not 1 <= n <= total:
        raise ValueError(f"num_layers must be in 1..{total}, got {n}")
    parent, name, stack = _layer_stack(model)
    setattr(parent, name, stack[:n])
    model.config.num_hidden_layers = n


class HFTextEncoder(Encoder):
    """A transformers encoder; pooled output = attention-masked mean of the last hidden state."""

    def __init__(self, name: str = DEFAULT_TEXT, num_layers: int | None = None, max_length: int = 64,
                 weights: bool = True, train_top: int = 0, adapter: str | None = None, lora_rank: int = 8) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel  # heavy (seconds to import): only when a text encoder is built

        self.name = name
        if weights:
            self.model = AutoModel.from_pretrained(resolve(name))
        else:  # architecture only (a run folder supplies the weights): no hub access, no weight file read
            self.model = AutoModel.from_config(AutoConfig.from_pretrained(resolve(name)))
        if num_layers is not None:
            _keep_first_layers(self.model, num_layers)
        self.num_layers = self.model.config.num_hidden_layers
        self.max_length = max_length
        self.out_dim = self.token_dim = int(self.model.config.hidden_size)
        self.pretrained = True
        # Weights (name + kept layers) and preprocessing (truncation length) both change the features.
        self.cache_id = f"text:{name}:L{self.num_layers}:len{max_length}"
        self.train_top = int(train_top)
        if self.train_top and not 1 <= self.train_top <= self.num_layers:
            raise PolymodalError(f"text encoder {name}: top={self.train_top} must be between 1 and "
                                 f"{self.num_layers} (its number of layers)")
        self.adapter, self.lora_rank = None, int(lora_rank)
        if adapter is not None:
            self.add_adapter(adapter, lora_rank)

    def add_adapter(self, adapter: str, lora_rank: int = 8) -> None:
        """Parameter-efficient fine-tuning: only the adapter's parameters train (this encoder then always runs
        whole, never from the feature cache). "lora": low-rank updates of the attention projections (peft's
        LoRA, Hu et al. 2021); "bitfit": the bias terms only (Ben Zaken et al. 2022)."""
        if self.train_top:
            raise PolymodalError("choose one of top=K and an adapter (lora, bitfit) for the text encoder")
        self.adapter, self.lora_rank = adapter, int(lora_rank)
        if adapter == "bitfit":
            for n, p in self.model.named_parameters():
                p.requires_grad_(n.endswith("bias"))
        elif adapter == "lora":
            try:
                from peft import LoraConfig, get_peft_model  # optional (polymodal[finetune]), heavy to import
            except ImportError:
                raise MissingDependencyError("text:lora needs peft: pip install 'polymodal[finetune]'") from None
            config = LoraConfig(r=self.lora_rank, lora_alpha=2 * self.lora_rank, lora_dropout=0.1)
            try:  # peft knows the attention projections of BERT-style models by their model type
                self.model = get_peft_model(self.model, config)
            except ValueError as exc:
                raise PolymodalError(f"LoRA for text encoder {self.name}: {exc}") from None
        else:
            raise PolymodalError(f"unknown text adapter {adapter!r}: lora or bitfit")
        self.cache_id += f":{adapter}"  # never shares cached features (it is never cached, but be explicit)

    def tokens(self, x: dict[str, Tensor]) -> Tensor:
        """Last hidden states (B, L, D), padded positions included (the caller holds the mask)."""
        out = self.model(input_ids=x["input_ids"], attention_mask=x["attention_mask"])
        return out.last_hidden_state.float()

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        return masked_mean(self.tokens(x), x["attention_mask"])

    def preprocess_config(self) -> dict:
        return {"tokenizer": self.name, "max_length": self.max_length}

    # ---- partial fine-tuning: the last `train_top` layers train ------------------------------------------
    def prefix(self, x: dict[str, Tensor]) -> Tensor:
        """Hidden states below the top layers, padded to max_length with padded positions exactly zero (so
        the cached array has one shape, and the attention mask is recovered as `token_mask`)."""
        out = self.model(input_ids=x["input_ids"], attention_mask=x["attention_mask"], output_hidden_states=True)
        h = out.hidden_states[self.num_layers - self.train_top].float()
        h = h * x["attention_mask"].unsqueeze(-1).to(h.dtype)
        return F.pad(h, (0, 0, 0, max(0, self.max_length - h.shape[1])))[:, :self.max_length]

    def prefix_shape(self) -> tuple[int, ...]:
        return (self.max_length, self.out_dim)

    def top_modules(self) -> list[nn.Module]:
        return list(_layer_stack(self.model)[2][self.num_layers - self.train_top:])

    def top_forward(self, h: Tensor, tokens: bool = False) -> Tensor:
        mask = token_mask(h)
        # the additive mask BERT-style layers take (0 where attended, the dtype's minimum elsewhere); the
        # same layers are called in order, so the output equals the uncut model's (tests/test_partial_finetune.py)
        extended = (~mask)[:, None, None, :].to(h.dtype) * torch.finfo(h.dtype).min
        for layer in self.top_modules():
            out = layer(h, attention_mask=extended)
            h = out[0] if isinstance(out, tuple) else out
        h = h * mask.unsqueeze(-1).to(h.dtype)
        return h if tokens else masked_mean(h, mask)


def load_adapted(folder: str, **opts) -> HFTextEncoder:
    """The text encoder `polymodal adapt` wrote to `folder`: its base model (and tokenizer) with the adapted
    weights; the cache id names those weights."""
    meta, weights = read_adapted(folder, "text")
    adapter, rank = opts.pop("adapter", None), opts.pop("lora_rank", 8)
    enc = HFTextEncoder(meta["base"], **{"max_length": int(meta["max_length"]), **opts})
    enc.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    enc.cache_id = enc.cache_id.replace(f"text:{meta['base']}:", f"text:adapted-{meta['sha256'][:16]}:", 1)
    if adapter is not None:  # on top of the adapted weights
        enc.add_adapter(adapter, rank)
    return enc


def build_text_encoder(name: str, layer_decay: float | None = None, **opts) -> HFTextEncoder:
    enc = load_adapted(name.removeprefix("adapted:"), **opts) if name.startswith("adapted:") else HFTextEncoder(
        name, **opts)
    return enc.set_layer_decay(layer_decay) if layer_decay else enc
