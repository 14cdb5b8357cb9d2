"""Bilinear attention (BAN) and parallel co-attention fusions: hand computations on tiny tensors with known
weights, padding and missing inputs that never change the output, gradients, pair choice, and a fit."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from polymodal import MultimodalPredictor
from polymodal.errors import PolymodalError
from polymodal.fusion import FUSIONS, BANFusion, CoAttentionFusion, build_fusion
from polymodal.fusion.ban import pick_pair
from polymodal.fusion.base import slot

DIMS = {"image": 3, "question": 2}


def _set(layer: torch.nn.Linear, weight, bias=None) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))


def _relu(v):
    return [max(0.0, a) for a in v]


def _lin(w, b, x):
    return [sum(wi * xi for wi, xi in zip(row, x, strict=True)) + (b[o] if b else 0.0) for o, row in enumerate(w)]


def _known_ban() -> BANFusion:
    f = BANFusion(DIMS, hidden=2, dropout=0.0, glimpses=1, k=1).eval()
    _set(f.v_in, [[1.0, 0.0, 0.5], [0.0, 1.0, -1.0]], [0.0, 0.2])
    _set(f.q_in, [[1.0, 0.5], [-0.5, 1.0]], [0.1, 0.0])
    _set(f.att_v, [[1.0, -0.5], [0.3, 1.0]], [0.1, 0.0])
    _set(f.att_q, [[0.5, 0.0], [0.0, 1.0]], [0.1, 0.1])
    with torch.no_grad():
        f.att_p.copy_(torch.tensor([[1.5, -0.5]]))
    _set(f.b_v[0], [[0.2, 1.0], [1.0, 0.3]], [0.0, 0.1])
    _set(f.b_q[0], [[1.0, -1.0], [0.5, 0.5]], [0.2, 0.0])
    _set(f.q_prj[0], [[1.0, 2.0], [0.0, -1.0]], [0.5, 0.0])
    return f


def _ban_by_hand(f: BANFusion, V: list[list[float]], Y: list[list[float]]) -> list[float]:
    """BAN with one glimpse and k = 1, written out as loops over tokens and hidden units."""
    w = {n: (getattr(f, n).weight.tolist(), getattr(f, n).bias.tolist()) for n in ("v_in", "q_in", "att_v", "att_q")}
    p = f.att_p[0].tolist()
    V = [_lin(*w["v_in"], x) for x in V]
    q0 = [_lin(*w["q_in"], y) for y in Y]
    av = [_relu(_lin(*w["att_v"], x)) for x in V]
    aq = [_relu(_lin(*w["att_q"], q)) for q in q0]
    logits = [[sum(p[k] * av[i][k] * aq[j][k] for k in range(2)) for j in range(len(Y))] for i in range(len(V))]
    z = sum(math.exp(s) for row in logits for s in row)
    A = [[math.exp(s) / z for s in row] for row in logits]
    bv = [_relu(_lin(f.b_v[0].weight.tolist(), f.b_v[0].bias.tolist(), x)) for x in V]
    bq = [_relu(_lin(f.b_q[0].weight.tolist(), f.b_q[0].bias.tolist(), q)) for q in q0]
    fk = [sum(A[i][j] * bv[i][k] * bq[j][k] for i in range(len(V)) for j in range(len(Y))) for k in range(2)]
    upd = _lin(f.q_prj[0].weight.tolist(), f.q_prj[0].bias.tolist(), fk)
    q1 = [[a + u for a, u in zip(q, upd, strict=True)] for q in q0]
    return [sum(q[k] for q in q1) / len(q1) for k in range(2)]


V1 = [[1.0, 0.5, -1.0], [0.0, 2.0, 1.0], [-1.0, 0.3, 0.7]]
Y1 = [[0.5, -1.0], [1.5, 0.25]]


def test_ban_one_glimpse_matches_the_hand_computation():
    f = _known_ban()
    got = f({"image": torch.tensor([V1]), "question": torch.tensor([Y1])})
    torch.testing.assert_close(got, torch.tensor([_ban_by_hand(f, V1, Y1)]), rtol=1e-5, atol=1e-6)


def test_ban_padded_tokens_and_missing_inputs_do_not_count():
    f = _known_ban()
    expected = torch.tensor([_ban_by_hand(f, V1, Y1)])
    # padding: two garbage visual tokens and one garbage query token, masked out
    v = torch.tensor([V1 + [[9.0, -7.0, 3.0], [1e6, 1e6, 1e6]]])
    y = torch.tensor([Y1 + [[float("nan"), 4.0]]])
    masks = {"image": torch.tensor([[True, True, True, False, False]]), "question": torch.tensor([[True, True, False]])}
    torch.testing.assert_close(f({"image": v, "question": y}, masks=masks), expected, rtol=1e-5, atol=1e-6)
    # a missing image: the row is the stand-in token alone, whatever the image values are
    stand_in = f.missing_token[slot("image")].detach().tolist()
    absent = {"image": torch.tensor([False]), "question": torch.tensor([True])}
    for junk in (torch.randn(1, 3, 3) * 1e3, torch.full((1, 3, 3), float("nan"))):
        got = f({"image": junk, "question": torch.tensor([Y1])}, absent)
        torch.testing.assert_close(got, torch.tensor([_ban_by_hand(f, [stand_in], Y1)]), rtol=1e-5, atol=1e-6)


def _coatt_by_hand(f: CoAttentionFusion, X: list[list[float]], Y: list[list[float]]) -> list[float]:
    def lin(layer, x):
        return _lin(layer.weight.tolist(), layer.bias.tolist() if layer.bias is not None else None, x)

    V = [lin(f.v_in, x) for x in X]
    Q = [lin(f.q_in, y) for y in Y]
    C = [[math.tanh(sum(a * b for a, b in zip(lin(f.w_b, q), v, strict=True))) for v in V] for q in Q]
    wv, wq = [lin(f.w_v, v) for v in V], [lin(f.w_q, q) for q in Q]
    H = len(V[0])
    h_v = [[math.tanh(wv[n][h] + sum(C[m][n] * wq[m][h] for m in range(len(Q)))) for h in range(H)]
           for n in range(len(V))]
    h_q = [[math.tanh(wq[m][h] + sum(C[m][n] * wv[n][h] for n in range(len(V)))) for h in range(H)]
           for m in range(len(Q))]

    def softmax(s):
        e = [math.exp(a) for a in s]
        return [a / sum(e) for a in e]

    a_v = softmax([lin(f.score_v, h)[0] for h in h_v])
    a_q = softmax([lin(f.score_q, h)[0] for h in h_q])
    pooled = [sum(a_v[n] * V[n][h] for n in range(len(V))) + sum(a_q[m] * Q[m][h] for m in range(len(Q)))
              for h in range(H)]
    return [math.tanh(a) for a in lin(f.out, pooled)]


def test_coattention_matches_the_hand_computation_and_ignores_padding():
    torch.manual_seed(5)
    f = CoAttentionFusion(DIMS, hidden=3, dropout=0.0).eval()
    expected = torch.tensor([_coatt_by_hand(f, V1, Y1)])
    torch.testing.assert_close(f({"image": torch.tensor([V1]), "question": torch.tensor([Y1])}), expected,
                               rtol=1e-5, atol=1e-6)
    v = torch.tensor([V1 + [[5.0, 5.0, 5.0]]])
    y = torch.tensor([Y1 + [[float("inf"), 1.0], [3.0, 3.0]]])
    masks = {"image": torch.tensor([[True, True, True, False]]), "question": torch.tensor([[True, True, False, False]])}
    torch.testing.assert_close(f({"image": v, "question": y}, masks=masks), expected, rtol=1e-5, atol=1e-6)
    # a missing question: the stand-in token alone
    stand_in = f.missing_token[slot("question")].detach().tolist()
    got = f({"image": torch.tensor([V1]), "question": torch.randn(1, 2, 2)},
            {"image": torch.tensor([True]), "question": torch.tensor([False])})
    torch.testing.assert_close(got, torch.tensor([_coatt_by_hand(f, V1, [stand_in])]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["ban", "coattention"])
def test_batched_rows_with_padding_equal_rows_alone(name):
    """A batch of rows with different valid lengths (and a tabular extra input) gives each row what it gives alone."""
    torch.manual_seed(0)
    f = build_fusion(name, {"image": 4, "question": 3, "tabular": 2}, hidden=6, dropout=0.0).eval()
    v, y, t = torch.randn(3, 5, 4), torch.randn(3, 4, 3), torch.randn(3, 2)
    nv, nq = [5, 2, 3], [1, 4, 2]
    masks = {"image": torch.arange(5) < torch.tensor(nv)[:, None],
             "question": torch.arange(4) < torch.tensor(nq)[:, None]}
    pres = {"image": torch.tensor([True, True, False]), "question": torch.ones(3, dtype=torch.bool),
            "tabular": torch.tensor([True, False, True])}
    batched = f({"image": v, "question": y, "tabular": t}, pres, masks)
    for r in range(3):
        alone = f({"image": v[r:r + 1, :nv[r]], "question": y[r:r + 1, :nq[r]], "tabular": t[r:r + 1]},
                  {k: p[r:r + 1] for k, p in pres.items()})
        torch.testing.assert_close(batched[r:r + 1], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["ban", "coattention"])
def test_every_parameter_gets_a_finite_gradient(name):
    torch.manual_seed(1)
    f = build_fusion(name, {"image": 4, "question": 3, "tabular": 2}, hidden=6, dropout=0.1).train()
    v, y = torch.randn(4, 5, 4), torch.randn(4, 3, 3)
    masks = {"image": torch.ones(4, 5, dtype=torch.bool),
             "question": torch.arange(3) < torch.tensor([3, 2, 1, 3])[:, None]}
    pres = {"image": torch.tensor([True, True, False, True]), "question": torch.tensor([True, False, True, True]),
            "tabular": torch.tensor([True, True, True, False])}
    v[2] = float("nan")  # garbage in a missing row must not reach the gradients
    out = f({"image": v, "question": y, "tabular": torch.randn(4, 2)}, pres, masks)
    (out * torch.randn_like(out)).sum().backward()
    for pname, q in f.named_parameters():
        assert q.grad is not None and torch.isfinite(q.grad).all(), pname
        assert q.grad.abs().sum() > 0, f"{pname} got a zero gradient"


def test_pair_choice_and_errors():
    assert pick_pair(["image", "question"], None, None) == ("image", "question")
    assert pick_pair(["a_text", "b"], None, None) == ("b", "a_text")  # the text-like name is the query
    assert pick_pair(["clip", "clip:audio", "tabular"], None, None) == ("clip", "clip:audio")
    assert pick_pair(["only"], None, None) == ("only", "only")  # one input attends over itself
    assert pick_pair(["image", "question", "report"], None, "report") == ("image", "report")
    with pytest.raises(PolymodalError, match="not one of"):
        pick_pair(["image", "question"], "scan", None)
    with pytest.raises(PolymodalError, match="both 'image'"):
        pick_pair(["image", "question"], "image", "image")
    with pytest.raises(PolymodalError, match="no option"):
        build_fusion("ban", DIMS, heads=2)
    assert FUSIONS["ban"] is BANFusion and FUSIONS["coattention"] is CoAttentionFusion
    assert build_fusion("ban", DIMS, glimpses=4, k=2).att_p.shape == (4, 256 * 2)


@pytest.mark.parametrize("fusion", ["ban", "coattention"])
def test_fit_with_image_grid_and_question_tokens(tmp_path, image_table, fusion):
    """Through the product: image grid tokens × question tokens, saved and reloaded with identical outputs."""
    df = pd.read_csv(image_table)
    df["question"] = ["what colour is it?", "is it red?", "is this blue?"] * (len(df) // 3)
    df = df[["image", "question", "label"]]
    df["image"] = [str(image_table.parent / v) for v in df["image"]]
    p = MultimodalPredictor(label="label", path=tmp_path / "run", fusion=fusion, max_epochs=2, batch_size=16,
                            encoders={"image": "small-cnn"}, encoder_opts={"image": {"image_size": 32}},
                            progress=False, verbose=False)
    p.fit(df)
    assert set(p.model.token_inputs) == {"image", "question"}
    assert isinstance(p.model.fusion, FUSIONS[fusion])
    assert (p.model.fusion.visual, p.model.fusion.query) == ("image", "question")
    probs = p.predict_proba(df.head(8), as_pandas=False)
    again = MultimodalPredictor.load(tmp_path / "run").predict_proba(df.head(8), as_pandas=False)
    torch.testing.assert_close(torch.tensor(again), torch.tensor(probs), rtol=0, atol=1e-6)
