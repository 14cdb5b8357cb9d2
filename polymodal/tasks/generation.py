"""Text generation (captioning, open-ended VQA): a transformer decoder that cross-attends to modality tokens.

- `Vocabulary`: the token ids the decoder predicts, a subset of a Hugging Face tokenizer's vocabulary (the
  text encoder's: MiniLM's WordPiece by default) with [CLS] as start, [SEP] as end and [PAD] as padding.
- `TextDecoder`: pre-norm transformer decoder layers; input and output embeddings tied (factorised through
  the tokenizer model's embedding width, so MiniLM's word embeddings can initialise them).
- `GenerationModel`: encoders → per-input projections to the decoder width → memory tokens (a pooled vector
  is one token, a token sequence keeps its tokens; absent inputs and padding are masked; a learned null
  token keeps the memory non-empty) → decoder. Teacher forcing in `forward`, decoding in `generate`.
- `GenerationTask`: the loss (cross-entropy over next tokens, padding ignored, optional label smoothing).
- `generate`: greedy, beam search (length penalty) and sampling (temperature, top-k, top-p) over any
  next-token function, with a maximum length and repetition control (no_repeat_ngram_size,
  repetition_penalty) shared by all three.

Decoding is written here rather than through transformers' `generate`, which needs the model wrapped as a
`PreTrainedModel` with its config and cache classes; the loops below are short and tests/test_generation.py
checks them on toy models with known optima. No key/value cache: targets are a few dozen tokens and the
decoder two or three layers, so recomputing the prefix each step is cheaper than the bookkeeping.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.data.text import BUILTIN, resolve
from polymodal.encoders.tokens import token_mask
from polymodal.errors import PolymodalError
from polymodal.model import MultimodalModel
from polymodal.problem_types import GENERATION

GENERATION_TASKS = ("caption", "vqa-open")
DECODE_METHODS = ("greedy", "beam", "sample")

# next-token logits (N, V) for prefixes (N, t) of token ids; rows (N,) say which input row each prefix
# belongs to (beam search keeps num_beams prefixes per row)
Step = Callable[[Tensor, Tensor], Tensor]


@dataclass
class DecodeConfig:
    """How `generate` picks tokens. method: greedy | beam | sample."""

    method: str = "beam"
    num_beams: int = 3
    max_new_tokens: int = 32
    length_penalty: float = 1.0  # beam: score = sum log p / length ** length_penalty (0: raw sum)
    no_repeat_ngram_size: int = 0  # 0 = off; n: no n-gram occurs twice in one output
    repetition_penalty: float = 1.0  # > 1 discourages tokens already generated (CTRL, Keskar et al. 2019)
    temperature: float = 1.0
    top_k: int = 0  # sample: keep the k most likely tokens (0 = all)
    top_p: float = 1.0  # sample: keep the smallest set whose probability reaches p
    seed: int = 0  # sample: generator seed

    def __post_init__(self) -> None:
        problems = []
        if self.method not in DECODE_METHODS:
            problems.append(f"method must be one of {', '.join(DECODE_METHODS)}, not {self.method!r}")
        if self.num_beams < 1 or self.max_new_tokens < 1:
            problems.append("num_beams and max_new_tokens must be at least 1")
        if self.no_repeat_ngram_size < 0 or self.top_k < 0:
            problems.append("no_repeat_ngram_size and top_k must be 0 or more")
        if self.repetition_penalty <= 0 or self.temperature <= 0 or not 0 < self.top_p <= 1:
            problems.append("repetition_penalty and temperature must be > 0, top_p in (0, 1]")
        if problems:
            raise PolymodalError("decoding settings: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict | None) -> DecodeConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d or {}) - names
        if unknown:
            raise PolymodalError(f"unknown decoding settings {sorted(unknown)}; known: {sorted(names)}")
        return cls(**(d or {}))


# ---- vocabulary -------------------------------------------------------------------------------------------

class Vocabulary:
    """Decoder token ids ↔ tokenizer ids. `ids` (sorted tokenizer ids) always include the special tokens."""

    def __init__(self, tokenizer, ids: Sequence[int]) -> None:
        def first(*ids):
            return next((i for i in ids if i is not None), None)

        specials = {"pad": tokenizer.pad_token_id, "bos": first(tokenizer.cls_token_id, tokenizer.bos_token_id),
                    "eos": first(tokenizer.sep_token_id, tokenizer.eos_token_id), "unk": tokenizer.unk_token_id}
        if any(v is None for v in specials.values()) or len(set(specials.values())) < 4:
            raise PolymodalError("the decoder's tokenizer needs distinct padding, start ([CLS]/<s>), end "
                                 "([SEP]/</s>) and unknown tokens; a BERT-style tokenizer has them")
        self.tokenizer = tokenizer
        self.ids = sorted(set(int(i) for i in ids) | set(specials.values()))
        self._local = {t: i for i, t in enumerate(self.ids)}
        self.pad, self.bos, self.eos, self.unk = (self._local[specials[k]] for k in ("pad", "bos", "eos", "unk"))

    @classmethod
    def build(cls, tokenizer, texts: Sequence[str], full: bool = False, max_tokens: int = 32) -> Vocabulary:
        """All tokenizer ids (`full`), or those the training texts use: the decoder cannot learn to write a
        token it never sees written, and a 30k-way softmax costs most of a small decoder's time on a CPU."""
        if full:
            return cls(tokenizer, range(len(tokenizer)))
        used = {t for ids in _tokenize(tokenizer, texts, max_tokens) for t in ids}
        return cls(tokenizer, used)

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, texts: Sequence[str], max_tokens: int) -> Tensor:
        """(B, L) decoder ids: [start] tokens [end], right-padded; tokens outside the vocabulary → unknown."""
        seqs = [[self.bos] + [self._local.get(t, self.unk) for t in ids] + [self.eos]
                for ids in _tokenize(self.tokenizer, texts, max_tokens)]
        out = torch.full((len(seqs), max(map(len, seqs))), self.pad, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, :len(s)] = torch.tensor(s)
        return out

    def decode(self, seqs: Sequence[Sequence[int]]) -> list[str]:
        """Decoder ids (without start/end) → text, WordPieces joined and punctuation re-attached."""
        return [detokenize(self.tokenizer.decode([self.ids[i] for i in s], skip_special_tokens=True))
                for s in seqs]


def _tokenize(tokenizer, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    return tokenizer([str(t) for t in texts], add_special_tokens=False, truncation=True,
                     max_length=max_tokens)["input_ids"]


def detokenize(text: str) -> str:
    """Undo the spaces WordPiece decoding leaves around punctuation: "5. 6 cm, t2 - weighted" → "5.6 cm,
    t2-weighted" (the tokenizer splits every punctuation mark off as its own token)."""
    text = re.sub(r"(\d)\s*\.\s*(\d)", r"\1.\2", text)
    text = re.sub(r"\s*([-/])\s*", r"\1", text)
    text = re.sub(r"\(\s+", "(", text)
    text = re.sub(r"\s+([)%:])", r"\1", text)
    return text.strip()


# ---- model ------------------------------------------------------------------------------------------------

def sinusoid(length: int, dim: int, device=None) -> Tensor:
    """Fixed sine/cosine positions (Vaswani et al. 2017), (length, dim): memory sequences of any length."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(length, dim, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, :dim // 2]
    return out


class TextDecoder(nn.Module):
    """Causal transformer decoder with cross-attention to a memory; tied input/output embeddings."""

    def __init__(self, vocab_size: int, d_model: int = 256, layers: int = 2, heads: int = 4,
                 dropout: float = 0.1, max_positions: int = 64, embed_dim: int | None = None) -> None:
        super().__init__()
        e = embed_dim or d_model
        self.d_model, self.max_positions = d_model, max_positions
        self.embed = nn.Embedding(vocab_size, e)
        nn.init.normal_(self.embed.weight, std=0.05)
        # tokenizer-model width ≠ decoder width: project in and out, so the embedding matrix stays tied
        self.embed_in = nn.Linear(e, d_model) if e != d_model else nn.Identity()
        self.embed_out = nn.Linear(d_model, e) if e != d_model else nn.Identity()
        self.pos = nn.Embedding(max_positions, d_model)
        nn.init.normal_(self.pos.weight, std=0.02)
        layer = nn.TransformerDecoderLayer(d_model, heads, 4 * d_model, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(d_model)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.drop = nn.Dropout(dropout)

    def forward(self, tokens: Tensor, memory: Tensor, memory_pad: Tensor) -> Tensor:
        """tokens (B, L) → logits (B, L, V); position i sees tokens ≤ i and the unmasked memory."""
        n = tokens.shape[1]
        if n > self.max_positions:
            raise PolymodalError(f"the decoder handles at most {self.max_positions} positions, got {n}")
        x = self.embed_in(self.embed(tokens)) + self.pos(torch.arange(n, device=tokens.device))
        causal = torch.ones(n, n, dtype=torch.bool, device=tokens.device).triu(1)
        h = self.layers(self.drop(x), memory, tgt_mask=causal, tgt_is_causal=True,
                        memory_key_padding_mask=memory_pad)
        return self.embed_out(self.norm(h)) @ self.embed.weight.T + self.bias


class GenerationModel(MultimodalModel):
    """Encoders (frozen ones fed from the feature cache) → memory tokens → `TextDecoder` (as the head)."""

    def __init__(self, encoders: nn.ModuleDict, in_dims: dict[str, int], decoder: TextDecoder,
                 token_inputs: dict[str, str] | None = None) -> None:
        super().__init__(encoders, nn.Identity(), decoder, token_inputs)
        d = decoder.d_model
        self.project = nn.ModuleDict({k: nn.Sequential(nn.LayerNorm(in_dims[k]), nn.Linear(in_dims[k], d))
                                      for k in sorted(encoders)})
        self.kind = nn.Parameter(torch.randn(len(encoders) + 1, d) * 0.02)  # [null token, one per input]

    @property
    def decoder(self) -> TextDecoder:
        return self.head

    def memory(self, batch: dict) -> tuple[Tensor, Tensor]:
        """(B, M, d) memory tokens and (B, M) padding mask (True = ignore)."""
        features, present = self.encode(batch)
        n = len(batch["row"])
        parts = [self.kind[0].expand(n, 1, -1)]
        pads = [torch.zeros(n, 1, dtype=torch.bool, device=parts[0].device)]
        for i, key in enumerate(sorted(features), 1):
            f = features[key]
            if f.dim() == 2:
                f, live = f[:, None], present[key][:, None]
            else:
                if getattr(self.encoders[key], "frozen", False):
                    f = f.half().float()  # as the cache stores it: same output for cached or fresh features
                live = token_mask(f) & present[key][:, None]
                used = live.any(0).nonzero()
                t = int(used.max()) + 1 if len(used) else 1  # drop positions padded in every row
                f, live = f[:, :t], live[:, :t]
            x = self.project[key](f) + self.kind[i]
            if f.shape[1] > 1:
                x = x + sinusoid(f.shape[1], x.shape[-1], x.device)
            parts.append(x)
            pads.append(~live)
        return torch.cat(parts, 1), torch.cat(pads, 1)

    def forward(self, batch: dict) -> Tensor:
        """Teacher forcing: logits (B, L-1, V) for target[:, 1:] given target[:, :-1]."""
        memory, pad = self.memory(batch)
        return self.decoder(batch["target"][:, :-1], memory, pad)

    @torch.inference_mode()
    def generate(self, batch: dict, vocab: Vocabulary, decode: DecodeConfig) -> list[list[int]]:
        """Decoder ids per row (start/end tokens removed)."""
        memory, pad = self.memory(batch)
        limit = self.decoder.max_positions - 1
        if decode.max_new_tokens > limit:
            decode = dataclasses.replace(decode, max_new_tokens=limit)

        def step(prefix: Tensor, rows: Tensor) -> Tensor:
            return self.decoder(prefix, memory[rows], pad[rows])[:, -1]

        seqs, _ = generate(step, len(batch["row"]), vocab.bos, vocab.eos, vocab.pad, decode,
                           banned=(vocab.bos, vocab.pad, vocab.unk), device=memory.device)
        return seqs


class GenerationTask:
    """Next-token cross-entropy over a `Vocabulary` (padding ignored); the monitored value is its loss."""

    problem_type = GENERATION
    monitor = ("loss", "min")

    def __init__(self, vocab: Vocabulary, label_smoothing: float = 0.0) -> None:
        self.vocab, self.label_smoothing = vocab, label_smoothing
        self.num_outputs = len(vocab)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """logits (B, L-1, V) from `GenerationModel.forward`; target (B, L) the full [start] ... [end] ids."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target[:, 1:].reshape(-1),
                               ignore_index=self.vocab.pad, label_smoothing=self.label_smoothing)

    def token_accuracy(self, logits: Tensor, target: Tensor) -> tuple[int, int]:
        """(correct, counted) next-token predictions, padding excluded."""
        y = target[:, 1:]
        keep = y != self.vocab.pad
        return int((logits.argmax(-1).eq(y) & keep).sum()), int(keep.sum())


def init_word_embeddings(decoder: TextDecoder, vocab: Vocabulary, source: str | None) -> bool:
    """Copy the text encoder's word embeddings (rows of the kept tokenizer ids) into the decoder's tied
    embedding, when `source` is a built-in text encoder whose width matches; returns whether it did."""
    if source not in BUILTIN:
        return False
    from pathlib import Path

    from safetensors import safe_open

    path = Path(resolve(source)) / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        name = next((k for k in f.keys() if k.endswith("word_embeddings.weight")), None)
        if name is None:
            return False
        table = f.get_tensor(name)
    if table.shape[1] != decoder.embed.weight.shape[1]:
        return False
    with torch.no_grad():
        decoder.embed.weight.copy_(table[torch.tensor(vocab.ids)])
    return True


# ---- decoding ---------------------------------------------------------------------------------------------

def generate(step: Step, n: int, bos: int, eos: int, pad: int, decode: DecodeConfig, banned: Sequence[int] = (),
             device: torch.device | str = "cpu") -> tuple[list[list[int]], list[float]]:
    """Token sequences for `n` rows (start and end tokens removed) and their scores: summed log-probability
    (beam search: divided by length ** length_penalty). `banned` tokens are never generated."""
    if decode.method == "beam" and decode.num_beams > 1:
        return _beam_search(step, n, bos, eos, decode, banned, device)
    return _greedy_or_sample(step, n, bos, eos, pad, decode, banned, device, greedy=decode.method != "sample")


def repetition_controls(logits: Tensor, prefix: Tensor, decode: DecodeConfig, banned: Sequence[int] = (),
                        eos: int | None = None) -> Tensor:
    """Apply the repetition penalty, the no-repeat-n-gram ban and banned tokens to next-token logits (N, V)
    for prefixes (N, t) whose first token is the start token (not counted as generated). A row left with
    no allowed token may still end (`eos`)."""
    logits = logits.clone()
    made = prefix[:, 1:]
    if decode.repetition_penalty != 1.0 and made.numel():
        seen = logits.gather(1, made)
        logits.scatter_(1, made, torch.where(seen > 0, seen / decode.repetition_penalty,
                                             seen * decode.repetition_penalty))
    size = decode.no_repeat_ngram_size
    if size and made.shape[1] >= size - 1:
        for r, seq in enumerate(made.tolist()):
            context = tuple(seq[len(seq) - size + 1:]) if size > 1 else ()
            ban = [seq[i + size - 1] for i in range(len(seq) - size + 1) if tuple(seq[i:i + size - 1]) == context]
            if ban:
                logits[r, ban] = -math.inf
    if banned:
        logits[:, list(banned)] = -math.inf
    if eos is not None:
        stuck = (logits == -math.inf).all(-1)
        logits[stuck, eos] = 0.0
    return logits


def top_k_top_p(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Logits outside the k most likely tokens, or outside the smallest set reaching probability p, → -inf."""
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # mass before a token already reaches p
        logits = logits.masked_fill(drop.scatter(1, order, drop), -math.inf)
    return logits


def _greedy_or_sample(step: Step, n: int, bos: int, eos: int, pad: int, decode: DecodeConfig,
                      banned: Sequence[int], device, greedy: bool) -> tuple[list[list[int]], list[float]]:
    seqs = torch.full((n, 1), bos, dtype=torch.long, device=device)
    rows = torch.arange(n, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    score = torch.zeros(n, device=device)
    gen = None if greedy else torch.Generator(device=device).manual_seed(decode.seed)
    for _ in range(decode.max_new_tokens):
        logits = repetition_controls(step(seqs, rows).float(), seqs, decode, banned, eos)
        if greedy:
            tok = logits.argmax(-1)
        else:
            probs = top_k_top_p(logits / decode.temperature, decode.top_k, decode.top_p).softmax(-1)
            tok = torch.multinomial(probs, 1, generator=gen)[:, 0]
        logp = logits.log_softmax(-1).gather(1, tok[:, None])[:, 0]
        tok = torch.where(done, torch.full_like(tok, pad), tok)
        score += torch.where(done, torch.zeros_like(logp), logp)
        seqs = torch.cat([seqs, tok[:, None]], 1)
        done |= tok == eos
        if bool(done.all()):
            break
    return [_strip(s, eos, pad) for s in seqs[:, 1:].tolist()], score.tolist()


def _strip(seq: list[int], eos: int, pad: int) -> list[int]:
    out = []
    for t in seq:
        if t in (eos, pad):
            break
        out.append(t)
    return out


def _beam_search(step: Step, n: int, bos: int, eos: int, decode: DecodeConfig, banned: Sequence[int],
                 device) -> tuple[list[list[int]], list[float]]:
    """Beam search as transformers' BeamSearchScorer does it: per row, the k best live prefixes are extended
    by every token; an end token ranked among the k best candidates closes a hypothesis (kept if among the
    k best closed ones); a row stops once its k closed hypotheses all beat the best live prefix's score."""
    k, lp = decode.num_beams, decode.length_penalty
    seqs = torch.full((n * k, 1), bos, dtype=torch.long, device=device)
    rows = torch.arange(n, device=device).repeat_interleave(k)
    scores = torch.zeros(n, k, device=device)
    scores[:, 1:] = -math.inf  # k identical start prefixes: keep one, or the k best would be copies
    closed: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
    done = [False] * n
    for t in range(1, decode.max_new_tokens + 1):
        logp = repetition_controls(step(seqs, rows).float(), seqs, decode, banned, eos).log_softmax(-1)
        vocab = logp.shape[-1]
        cand = (scores.reshape(-1, 1) + logp).reshape(n, k * vocab)
        top, idx = cand.topk(min(2 * k, k * vocab), dim=1)  # 2k: k live ones survive even if k tokens end
        src, tok = (idx // vocab).tolist(), (idx % vocab).tolist()
        top = top.tolist()
        prefixes = seqs[:, 1:].tolist()
        pick_src, pick_tok, pick_score = [], [], []
        for r in range(n):
            live: list[tuple[int, int, float]] = []
            if not done[r]:
                for rank, (s, b, w) in enumerate(zip(top[r], src[r], tok[r])):
                    if s == -math.inf:
                        break
                    if w == eos:
                        if rank < k:
                            _keep_best(closed[r], s / t ** lp, prefixes[r * k + b], k)
                    else:
                        live.append((b, w, s))
                        if len(live) == k:
                            break
                best_live = live[0][2] / t ** lp if live else -math.inf
                done[r] = not live or (len(closed[r]) == k and closed[r][-1][0] >= best_live)
            live += [(0, eos, -math.inf)] * (k - len(live))  # dead slots: never extended again
            pick_src += [r * k + b for b, _, _ in live]
            pick_tok += [w for _, w, _ in live]
            pick_score += [s for _, _, s in live]
        seqs = torch.cat([seqs[pick_src], torch.tensor(pick_tok, device=device)[:, None]], 1)
        scores = torch.tensor(pick_score, device=device).reshape(n, k)
        if all(done):
            break
    length = seqs.shape[1] - 1
    prefixes = seqs[:, 1:].tolist()
    for r in range(n):  # rows that reached the length limit: their live prefixes compete as they are
        if not done[r]:
            for b in range(k):
                if scores[r, b] > -math.inf:
                    _keep_best(closed[r], float(scores[r, b]) / length ** lp, prefixes[r * k + b], k)
    best = [c[0] if c else (-math.inf, []) for c in closed]
    return [list(h) for _, h in best], [s for s, _ in best]


def _keep_best(hyps: list[tuple[float, list[int]]], score: float, tokens: list[int], k: int) -> None:
    hyps.append((score, tokens))
    hyps.sort(key=lambda h: -h[0])
    del hyps[k:]
