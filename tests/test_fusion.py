"""Fusion library: shapes, hand computations (TFN, LMF, weighted sum), gradients, missing inputs, tokens."""

from __future__ import annotations

import pytest
import torch

from polymodal.errors import PolymodalError
from polymodal.fusion import (
    FUSIONS,
    LowRankFusion,
    TensorFusion,
    WeightedSumFusion,
    build_fusion,
    drop_modalities,
    fusion_names,
)
from polymodal.fusion.base import slot

DIMS3 = {"text": 5, "image": 7, "audio": 3}
B = 6
# rows: all present; one of each missing; only the first sorted key (audio); none present
PRESENT3 = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)



def inputs(dims: dict[str, int], batch: int = B, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(batch, d, generator=g) for k, d in dims.items()}


def presence(dims: dict[str, int]) -> dict[str, torch.Tensor]:
    return {k: PRESENT3[:, i] for i, k in enumerate(sorted(dims))}


def make(name: str, dims: dict[str, int], **opts):
    torch.manual_seed(0)
    return build_fusion(name, dims, hidden=8, dropout=0.0, num_outputs=3, **opts)


def with_garbage(x: dict, present: dict, fill: float | None) -> dict:
    """Missing rows overwritten with huge noise (fill=None) or a constant such as NaN/inf."""
    out = {}
    for k, v in x.items():
        junk = torch.randn_like(v) * 1e3 if fill is None else torch.full_like(v, fill)
        out[k] = torch.where(present[k].view(-1, *([1] * (v.dim() - 1))), v, junk)
    return out


def test_names_and_builder_errors():
    assert fusion_names() == ["concat", "sum", "weighted", "product", "attention", "gated", "tensor", "lmf",
                              "film", "transformer", "ban", "coattention", "late"]
    assert all(FUSIONS[n].produces_logits == (n == "late") for n in fusion_names())
    with pytest.raises(PolymodalError, match="unknown fusion"):
        build_fusion("nope", DIMS3)
    with pytest.raises(PolymodalError, match="no option"):
        build_fusion("concat", DIMS3, rank=3)
    with pytest.raises(PolymodalError, match="num_outputs"):
        build_fusion("late", DIMS3)
    with pytest.raises(PolymodalError, match="modality_dropout"):
        build_fusion("sum", DIMS3, modality_dropout=1.0)


@pytest.mark.parametrize("name", list(FUSIONS))
@pytest.mark.parametrize("n", [1, 2, 3])
def test_output_shape(name, n):
    # awkward keys: '.' and a ModuleDict method name must not break the per-input module dicts
    dims = dict(list({"image.path": 7, "values": 5, "audio": 3}.items())[:n])
    f = make(name, dims)
    x, p = inputs(dims), presence(dims)
    for mode in (True, False):
        y = f.train(mode)(x, p)
        assert y.shape == (B, f.out_dim) and torch.isfinite(y).all()
    assert f.out_dim == (3 if name == "late" else 8)
    # the order of the dict does not matter: keys are always read sorted
    assert torch.equal(f(dict(reversed(list(x.items()))), p), f(x, p))


def test_concat_without_mlp_is_the_concatenation():
    f = make("concat", DIMS3, mlp=False).eval()
    x = inputs(DIMS3)
    p = presence(DIMS3)
    emb = {k: f.missing.emb[slot(k)] for k in DIMS3}
    expected = torch.cat([torch.where(p[k].unsqueeze(1), x[k], emb[k]) for k in sorted(DIMS3)], 1)
    assert f.out_dim == 15
    torch.testing.assert_close(f(x, p), expected, rtol=0, atol=0)


def test_tfn_matches_kronecker_by_hand():
    dims = {"a": 2, "b": 2, "c": 2}
    torch.manual_seed(1)
    f = TensorFusion(dims, hidden=4, dropout=0.0, d=2).eval()
    with torch.no_grad():
        for k in dims:
            f.proj[slot(k)].weight.copy_(torch.eye(2))
            f.proj[slot(k)].bias.zero_()
    x = {"a": torch.tensor([[1.0, 2.0], [0.5, -1.0]]), "b": torch.tensor([[3.0, -1.0], [2.0, 2.0]]),
         "c": torch.tensor([[0.5, 4.0], [1.0, 1.0]])}
    p = {"a": torch.tensor([True, True]), "b": torch.tensor([True, False]), "c": torch.tensor([True, True])}
    rows = []
    for i in range(2):
        z = [torch.cat([x[k][i] if p[k][i] else f.missing.emb[slot(k)].detach(), torch.ones(1)])
             for k in "abc"]
        rows.append(torch.kron(torch.kron(z[0], z[1]), z[2]))
    t = torch.stack(rows)
    assert t.shape == (2, 27) and t[0, -1] == 1.0 and t[0, 0] == 1.0 * 3.0 * 0.5
    expected = t @ f.out.weight.T + f.out.bias
    torch.testing.assert_close(f(x, p), expected.detach())


def test_lmf_matches_full_weight_tensor_and_trains_every_factor():
    dims = {"a": 2, "b": 3}
    torch.manual_seed(2)
    f = LowRankFusion(dims, hidden=4, dropout=0.0, rank=3).eval()
    params = {id(q) for q in f.parameters()}
    assert all(id(fac) in params for fac in f.factors.values()) and len(f.factors) == 2
    fa, fb = f.factors[slot("a")].detach(), f.factors[slot("b")].detach()
    assert fa.shape == (3, 3, 4) and fb.shape == (3, 4, 4)
    w, bias = f.fusion_weights.detach()[0], f.fusion_bias.detach()
    x = inputs(dims, batch=5)
    p = {"a": torch.ones(5, dtype=torch.bool), "b": torch.tensor([1, 1, 0, 1, 1]).bool()}
    za = torch.cat([x["a"], torch.ones(5, 1)], 1)
    xb = torch.where(p["b"].unsqueeze(1), x["b"], f.missing.emb[slot("b")].detach())
    zb = torch.cat([xb, torch.ones(5, 1)], 1)
    # Liu et al. eq. (6): h = Σ_r w_r (z_a W_a^(r)) ∘ (z_b W_b^(r)) + b, one rank at a time
    by_rank = sum(w[r] * (za @ fa[r]) * (zb @ fb[r]) for r in range(3)) + bias
    # the same through the full TFN weight tensor W = Σ_r w_r W_a^(r) ⊗ W_b^(r) applied to z_a ⊗ z_b
    full = torch.einsum("r,rio,rjo->ijo", w, fa, fb)
    via_tensor = torch.einsum("bi,bj,ijo->bo", za, zb, full) + bias
    out = f(x, p)
    torch.testing.assert_close(out, by_rank)
    torch.testing.assert_close(out, via_tensor)
    # one optimiser step moves every factor (MultiBench's list-held factors never would)
    before = [fac.detach().clone() for fac in f.factors.values()]
    opt = torch.optim.SGD(f.parameters(), lr=0.1)
    f.train()(x, p).pow(2).sum().backward()
    opt.step()
    assert all(not torch.equal(b0, fac) for b0, fac in zip(before, f.factors.values(), strict=True))


def test_weighted_sum_by_hand():
    torch.manual_seed(3)
    f = WeightedSumFusion(DIMS3, hidden=4, dropout=0.0).eval()
    with torch.no_grad():
        f.bias.normal_()
    x, p = inputs(DIMS3), presence(DIMS3)
    expected = f.bias.detach().expand(B, 4).clone()
    for k in DIMS3:
        W = f.weight[slot(k)].weight.detach()
        expected += p[k].float().unsqueeze(1) * (x[k] @ W.T)
    torch.testing.assert_close(f(x, p), expected)
    torch.testing.assert_close(f(x, p)[-1], f.bias.detach())  # no input: just b


@pytest.mark.parametrize("name", list(FUSIONS))
@pytest.mark.parametrize("n", [1, 2, 3])
def test_every_parameter_gets_a_gradient(name, n):
    dims = dict(list(DIMS3.items())[:n])
    f = make(name, dims, modality_dropout=0.0).train()
    x, p = inputs(dims), presence(dims)
    if name in ("ban", "coattention"):  # attention over one token per input is constantly 1: give sequences
        x = {k: v.unsqueeze(1) * torch.linspace(-1.5, 1.5, 4).view(1, 4, 1) for k, v in x.items()}
    y = f(with_garbage(x, p, float("nan")), p)
    # a random read-out: a plain sum would hide gradients (e.g. through a final LayerNorm)
    (y * torch.randn_like(y)).sum().backward()
    for pname, q in f.named_parameters():
        assert q.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(q.grad).all(), f"{name}: {pname} has a non-finite gradient (garbage leaked)"
        assert q.grad.abs().sum() > 0, f"{name}: {pname} got a zero gradient"


@pytest.mark.parametrize("name", list(FUSIONS))
def test_garbage_in_missing_rows_is_ignored(name):
    f = make(name, DIMS3).eval()
    x, p = inputs(DIMS3), presence(DIMS3)
    ref = f(with_garbage(x, p, 0.0), p)
    for fill in (None, float("nan"), float("inf")):
        torch.testing.assert_close(f(with_garbage(x, p, fill), p), ref, rtol=0, atol=0)
    # and the missing rows really are treated differently from present ones
    assert not torch.allclose(f(x, {k: torch.ones(B, dtype=torch.bool) for k in DIMS3}), ref)


@pytest.mark.parametrize("name", ["sum", "weighted", "product", "attention", "gated", "late", "transformer"])
def test_only_one_present_equals_that_input_alone(name):
    full = make(name, DIMS3).eval()
    alone = make(name, {"image": 7}).eval()
    shared = {k: v for k, v in full.state_dict().items() if k in alone.state_dict()}
    missing = alone.load_state_dict(shared, strict=False).missing_keys
    assert missing == []
    x = inputs(DIMS3)
    p = {"audio": torch.zeros(B, dtype=torch.bool), "image": torch.ones(B, dtype=torch.bool),
         "text": torch.zeros(B, dtype=torch.bool)}
    torch.testing.assert_close(full(x, p), alone({"image": x["image"]}, {"image": p["image"]}),
                               atol=1e-5, rtol=1e-5)


def test_drop_modalities_keeps_one_and_only_drops_present():
    torch.manual_seed(4)
    pres = torch.rand(20000, 3) < 0.7
    d = {k: pres[:, i] for i, k in enumerate("abc")}
    kept = torch.stack(list(drop_modalities(d, 0.5).values()), 1)
    assert not (kept & ~pres).any()  # never switches a missing input on
    assert (kept.any(1) == pres.any(1)).all()  # never empties a row that had an input
    single = pres.sum(1) == 1
    assert torch.equal(kept[single], pres[single])
    three = pres.all(1)  # a 3-input row keeps each with prob 0.5, rescued when all three drop
    rate = kept[three].float().mean().item()
    assert abs(rate - (0.5 + 0.125 / 3)) < 0.02


@pytest.mark.parametrize("name", ["concat", "attention", "transformer"])
def test_modality_dropout_only_in_training(name):
    x, p = inputs(DIMS3, batch=64), {k: torch.ones(64, dtype=torch.bool) for k in DIMS3}
    plain = make(name, DIMS3)
    dropping = make(name, DIMS3, modality_dropout=0.9)  # same seed: same weights
    torch.testing.assert_close(dropping.eval()(x, p), plain.eval()(x, p), rtol=0, atol=0)
    # dropout=0.0, so in training only the dropped inputs can make the outputs differ
    changed = ~torch.isclose(dropping.train()(x, p), plain.train()(x, p)).all(1)
    assert changed.float().mean() > 0.5


# ---- token inputs (transformer, FiLM) ----

TOK = {"image": 6, "text": 5}


def token_batch(seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = {"image": torch.randn(3, 4, 6, generator=g), "text": torch.randn(3, 5, generator=g)}
    masks = {"image": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)}
    p = {"image": torch.ones(3, dtype=torch.bool), "text": torch.tensor([True, True, False])}
    return x, p, masks


@pytest.mark.parametrize("name", ["transformer", "film"])
def test_token_inputs_honour_masks(name):
    f = make(name, TOK).eval()
    x, p, masks = token_batch()
    out = f(x, p, masks=masks)
    assert out.shape == (3, 8)
    # garbage in padded tokens changes nothing
    junk = dict(x, image=torch.where(masks["image"].unsqueeze(-1), x["image"], float("nan")))
    torch.testing.assert_close(f(junk, p, masks=masks), out, rtol=0, atol=0)
    # row 1 (two valid tokens) equals the same row cut to its valid tokens with no mask
    cut = {"image": x["image"][1:2, :2], "text": x["text"][1:2]}
    torch.testing.assert_close(f(cut, {k: v[1:2] for k, v in p.items()})[0], out[1], atol=1e-5, rtol=1e-5)
    # a row with no valid token counts as a missing image
    p_missing = dict(p, image=torch.tensor([True, True, False]))
    torch.testing.assert_close(f(x, p_missing)[2], out[2], atol=1e-6, rtol=1e-6)
    # without masks every token counts, so rows 1 and 2 change
    unmasked = f(x, p)
    assert not torch.allclose(unmasked[1], out[1]) and not torch.allclose(unmasked[2], out[2])


@pytest.mark.parametrize("name", ["transformer", "film"])
def test_pooled_input_is_one_token(name):
    f = make(name, TOK).eval()
    x, p, _ = token_batch()
    pooled = {"image": x["image"][:, 0], "text": x["text"]}
    as_tokens = {"image": x["image"][:, :1], "text": x["text"].unsqueeze(1)}
    torch.testing.assert_close(f(pooled, p), f(as_tokens, p), atol=1e-6, rtol=1e-6)


def test_film_conditioned_choice_and_missing_text_embedding():
    assert make("film", TOK).conditioned == "image"
    assert make("film", {"a": 3, "b": 4}, token_keys=["b"]).conditioned == "b"
    assert make("film", {"a": 3, "b": 4}).conditioned == "a"
    f = make("film", TOK).eval()
    x, p, masks = token_batch()
    # a missing conditioning input is its learned embedding: same as feeding that embedding as present
    emb = f.missing.emb[slot("text")].detach()
    fed = dict(x, text=torch.where(p["text"].unsqueeze(1), x["text"], emb))
    torch.testing.assert_close(f(x, p, masks=masks), f(fed, dict(p, text=torch.ones(3, dtype=torch.bool)),
                                                       masks=masks))


def test_pooled_fusions_reject_tokens():
    x, p, _ = token_batch()
    with pytest.raises(ValueError, match="pooled"):
        make("concat", TOK)(x, p)
