"""Text generation: decoding on toy models with known optima, the decoder, and caption / vqa-open end to end."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from polymodal.tasks.generation import (
    DecodeConfig,
    GenerationModel,
    TextDecoder,
    detokenize,
    generate,
    repetition_controls,
    top_k_top_p,
)

PAD, BOS, EOS, A, B, C = range(6)
V = 6


def toy(tables: dict | list[dict]):
    """A next-token function from {generated prefix (tuple): {token: probability}}; unlisted prefixes end.
    A list gives each input row its own table."""
    per_row = tables if isinstance(tables, list) else None

    def step(prefix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(prefix), V), -math.inf)
        for i, (seq, r) in enumerate(zip(prefix.tolist(), rows.tolist())):
            table = per_row[r] if per_row else tables
            for tok, p in table.get(tuple(seq[1:]), {EOS: 1.0}).items():
                out[i, tok] = math.log(p)
        return out

    return step


# Greedy is myopic here: A (0.6) then a three-way tie-ish split leaves A·A·end at 0.6 × 0.34 = 0.204,
# while B (0.4) then end (0.9) is 0.36.
MYOPIC = {(): {A: 0.6, B: 0.4}, (A,): {A: 0.34, B: 0.33, EOS: 0.33}, (B,): {EOS: 0.9, A: 0.05, B: 0.05}}


def sequence_logprob(table: dict, seq: list[int]) -> float:
    total, prefix = 0.0, ()
    for tok in [*seq, EOS]:
        p = table.get(prefix, {EOS: 1.0}).get(tok, 0.0)
        if p == 0:
            return -math.inf
        total += math.log(p)
        prefix = (*prefix, tok)
    return total


def best_by_enumeration(table: dict, max_len: int) -> list[int]:
    seqs = [list(s) for n in range(max_len + 1) for s in itertools.product((A, B, C), repeat=n)]
    return max(seqs, key=lambda s: sequence_logprob(table, s))


def run(step, n: int = 1, **settings) -> tuple[list[list[int]], list[float]]:
    return generate(step, n, BOS, EOS, PAD, DecodeConfig(**settings), banned=(BOS, PAD))


def test_beam_search_beats_myopic_greedy_and_finds_the_optimum():
    greedy, g_score = run(toy(MYOPIC), method="greedy", max_new_tokens=5)
    beam, b_score = run(toy(MYOPIC), method="beam", num_beams=2, length_penalty=0.0, max_new_tokens=5)
    assert greedy == [[A, A]] and beam == [[B]]
    assert g_score[0] == pytest.approx(math.log(0.6 * 0.34))
    assert b_score[0] == pytest.approx(math.log(0.4 * 0.9)) == pytest.approx(sequence_logprob(MYOPIC, [B]))
    assert beam[0] == best_by_enumeration(MYOPIC, 4)


def test_beam_of_one_is_greedy_and_rows_are_independent():
    assert run(toy(MYOPIC), method="beam", num_beams=1)[0] == run(toy(MYOPIC), method="greedy")[0]
    other = {(): {C: 0.7, A: 0.3}, (C,): {C: 0.5, EOS: 0.5}, (C, C): {EOS: 1.0}}
    both, _ = generate(toy([MYOPIC, other]), 2, BOS, EOS, PAD,
                       DecodeConfig(method="beam", num_beams=3, length_penalty=0.0), banned=(BOS, PAD))
    assert both == [[B], [C]]
    assert both[1] == best_by_enumeration(other, 4)


def test_random_tables_beam_matches_exhaustive_search():
    rng = np.random.default_rng(0)
    for _ in range(20):
        table = {}
        for n in range(3):
            for prefix in itertools.product((A, B, C), repeat=n):
                p = rng.dirichlet(np.ones(4) * 0.5)
                table[prefix] = dict(zip((A, B, C, EOS), p.tolist()))
        # length 3 ends for sure (unlisted prefixes end): the search space is finite and small
        beam, score = run(toy(table), method="beam", num_beams=27, length_penalty=0.0, max_new_tokens=4)
        best = best_by_enumeration(table, 3)
        assert score[0] == pytest.approx(sequence_logprob(table, best))


def test_length_penalty_favours_longer_hypotheses():
    # end now (0.5) vs. two more tokens (0.5 · 0.9 · 0.9 ≈ 0.405): raw sum picks the short one; dividing
    # by length picks the long one (log 0.405 / 3 > log 0.5 / 1)
    table = {(): {EOS: 0.5, A: 0.5}, (A,): {A: 0.9, EOS: 0.1}, (A, A): {EOS: 0.9, A: 0.1}}
    assert run(toy(table), method="beam", num_beams=2, length_penalty=0.0)[0] == [[]]
    assert run(toy(table), method="beam", num_beams=2, length_penalty=1.0)[0] == [[A, A]]


def test_max_new_tokens_and_no_repeat_ngram():
    loop = {}
    for n in range(12):
        for prefix in itertools.product((A, B), repeat=n):
            loop[prefix] = {A: 0.6, B: 0.3, EOS: 0.1}
    seq = run(toy(loop), method="greedy", max_new_tokens=5)[0][0]
    assert seq == [A] * 5
    seq = run(toy(loop), method="greedy", max_new_tokens=8, no_repeat_ngram_size=2)[0][0]
    bigrams = list(zip(seq, seq[1:]))
    assert len(bigrams) == len(set(bigrams)) and seq[:3] == [A, A, B]
    assert run(toy(loop), method="greedy", no_repeat_ngram_size=1)[0][0] == [A, B]
    beam = run(toy(loop), method="beam", num_beams=3, max_new_tokens=8, no_repeat_ngram_size=2)[0][0]
    assert len(list(zip(beam, beam[1:]))) == len(set(zip(beam, beam[1:])))


def test_repetition_penalty_and_filters():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    prefix = torch.tensor([[BOS, 0, 1]])
    out = repetition_controls(logits, prefix, DecodeConfig(repetition_penalty=2.0))
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.5]]  # CTRL: positive logits divided, negative multiplied
    assert top_k_top_p(logits, top_k=2).isinf().tolist() == [[False, True, False, True]]
    # probabilities ≈ [0.61, 0.01, 0.22, 0.14]: p = 0.7 keeps the two most likely tokens
    assert top_k_top_p(logits, top_p=0.7).isinf().tolist() == [[False, True, False, True]]
    assert top_k_top_p(logits, top_p=0.5).isinf().tolist() == [[False, True, True, True]]


def test_sampling_is_seeded_and_filters_reduce_to_greedy():
    greedy = run(toy(MYOPIC), method="greedy")[0]
    assert run(toy(MYOPIC), method="sample", top_k=1)[0] == greedy
    assert run(toy(MYOPIC), method="sample", top_p=0.01)[0] == greedy
    a = run(toy(MYOPIC), 64, method="sample", seed=3)[0]
    assert a == run(toy(MYOPIC), 64, method="sample", seed=3)[0]
    firsts = [s[0] for s in a]
    assert 0.4 < firsts.count(A) / 64 < 0.8  # P(A first) = 0.6
    cold = run(toy(MYOPIC), 64, method="sample", temperature=0.05, seed=1)[0]
    assert all(s[0] == A for s in cold)


def test_bad_decoding_settings_are_refused():
    from polymodal.errors import PolymodalError

    with pytest.raises(PolymodalError, match="method"):
        DecodeConfig(method="nucleus")
    with pytest.raises(PolymodalError, match="unknown decoding settings"):
        DecodeConfig.from_dict({"beams": 3})


def test_decoder_is_causal_and_generation_step_matches_teacher_forcing():
    torch.manual_seed(0)
    dec = TextDecoder(vocab_size=10, d_model=32, layers=2, heads=4, dropout=0.0, max_positions=12).eval()
    memory, pad = torch.randn(2, 5, 32), torch.zeros(2, 5, dtype=torch.bool)
    pad[1, 3:] = True
    tokens = torch.randint(0, 10, (2, 7))
    logits = dec(tokens, memory, pad)
    changed = tokens.clone()
    changed[:, 4:] = (changed[:, 4:] + 1) % 10
    torch.testing.assert_close(dec(changed, memory, pad)[:, :4], logits[:, :4])  # the future is not seen
    torch.testing.assert_close(dec(tokens[:, :3], memory, pad)[:, -1], logits[:, 2])
    memory2 = memory.clone()
    memory2[1, 3:] = 100.0  # masked memory positions do not matter
    torch.testing.assert_close(dec(tokens, memory2, pad)[1], logits[1])


def test_missing_modality_rows_still_generate():
    from torch import nn

    dec = TextDecoder(vocab_size=8, d_model=16, layers=1, heads=2, dropout=0.0, max_positions=10)
    model = GenerationModel(nn.ModuleDict({"img": _Frozen(12)}), {"img": 12}, dec, {"img": "image"}).eval()
    feats = torch.randn(3, 4, 12)
    feats[2] = 0  # a row whose image is missing: all tokens padding
    batch = {"row": torch.arange(3), "features": {"img": feats}, "inputs": {},
             "present": {"img": torch.tensor([True, True, False])}}
    memory, pad = model.memory(batch)
    assert memory.shape == (3, 5, 16) and pad[2].tolist() == [False, True, True, True, True]
    assert not torch.isnan(dec(torch.zeros(3, 2, dtype=torch.long), memory, pad)).any()


class _Frozen(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out_dim = self.token_dim = dim
        self.frozen = True


def test_vocabulary_round_trip_and_unknown_tokens():
    from polymodal.data.text import get_tokenizer
    from polymodal.tasks.generation import Vocabulary

    tok = get_tokenizer("minilm-l6")
    v = Vocabulary.build(tok, ["a blue circle", "5.6 cm t2-weighted lesion"])
    ids = v.encode(["a blue circle", "a red circle"], 8)
    assert ids.shape == (2, 5) and ids[0, 0] == v.bos and ids[0, 4] == v.eos
    assert ids[1, 2] == v.unk  # "red" is not in the training texts
    assert v.decode([ids[0, 1:4].tolist()]) == ["a blue circle"]
    seq = v.encode(["5.6 cm t2-weighted lesion"], 16)[0].tolist()
    assert v.decode([seq[1:seq.index(v.eos)]]) == ["5.6 cm t2-weighted lesion"]
    assert len(Vocabulary.build(tok, [], full=True)) == len(tok)


def test_detokenize():
    assert detokenize("5. 6 cm mass in the t2 - weighted right - sided lobe") == \
        "5.6 cm mass in the t2-weighted right-sided lobe"
    assert detokenize("a blue circle") == "a blue circle"


# ---- end to end -------------------------------------------------------------------------------------------

FAST = dict(max_epochs=25, batch_size=16, lr=3e-3, patience=25, progress=False, d_model=64, heads=4, layers=2,
            dropout=0.0, init_embeddings=False, encoders={"image": "small-cnn"},
            encoder_opts={"image": {"image_size": 32}})


def caption_table(root, n: int = 48):
    from conftest import write_image

    (root / "imgs").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        color = ["red", "blue", "green"][i % 3]
        write_image(root / "imgs" / f"{i}.png", color, seed=i)
        rows.append({"image": f"imgs/{i}.png", "caption": f"a {color} square."})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root / "train.csv"


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    from polymodal import MultimodalPredictor

    root = tmp_path_factory.mktemp("cap")
    caption_table(root)
    p = MultimodalPredictor(label="caption", task="caption", path=root / "run", verbose=False, **FAST)
    p.fit(root / "train.csv")
    return p, root


def test_caption_fit_predict_evaluate(captioner):
    from polymodal.data.readers import read_table

    p, root = captioner
    df = read_table(root / "train.csv")
    pred = p.predict(df)
    assert pred.index.equals(df.index) and pd.api.types.is_string_dtype(pred)
    assert (pred == df["caption"]).mean() >= 0.9  # "a red square." : the period re-attached
    m = p.evaluate(df, method="greedy")
    assert m["exact_match"] >= 0.9 and m["items"] == len(df) and m["bleu_3"] > 0.9
    assert {"bleu_1", "bleu_4", "rouge_l", "cider_d"} <= set(m)
    assert p.metrics["valid"]["exact_match"] >= 0.5
    with pytest.raises(Exception, match="no class probabilities"):
        p.predict_proba(df)


def test_caption_run_folder_loads_offline_and_predicts_the_same(captioner):
    from polymodal import MultimodalPredictor
    from polymodal.data.readers import read_table

    p, root = captioner
    run = root / "run"
    for name in ("config.json", "preprocess.json", "model.safetensors", "metrics.json", "README.md",
                 "decoder_tokenizer/tokenizer_config.json", "plots/training_curves.png"):
        assert (run / name).exists(), name
    q = MultimodalPredictor.load(run)
    assert q.kind == "generation"
    df = read_table(root / "train.csv")
    assert q.predict(df).tolist() == p.predict(df).tolist()
    assert q.predict(df.head(3), method="sample", top_k=1).tolist() == p.predict(df.head(3), method="greedy").tolist()


def test_cli_fit_and_predict_caption(tmp_path):
    from typer.testing import CliRunner

    from polymodal.cli import app

    caption_table(tmp_path, n=24)
    res = CliRunner().invoke(app, ["fit", str(tmp_path / "train.csv"), "--task", "caption", "--label", "caption",
                                   "--out", str(tmp_path / "run"), "--image-encoder", "small-cnn", "--image-size",
                                   "32", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "run"), str(tmp_path / "train.csv"), "--out",
                                   str(tmp_path / "pred.csv")])
    assert res.exit_code == 0, res.output
    out = pd.read_csv(tmp_path / "pred.csv")
    assert "predicted_caption" in out and not any(c.startswith("proba_") for c in out.columns)
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), str(tmp_path / "train.csv")])
    assert res.exit_code == 0 and "cider_d" in res.output
    res = CliRunner().invoke(app, ["fit", "--resume", str(tmp_path / "run")])  # finished: resumes at the end
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["fit", str(tmp_path / "train.csv"), "--task", "caption", "--label", "caption",
                                   "--out", str(tmp_path / "run2"), "--fusion", "film"])
    assert res.exit_code == 2 and "does not apply" in res.output


def test_unknown_task_is_refused():
    from polymodal import MultimodalPredictor
    from polymodal.errors import PolymodalError

    with pytest.raises(PolymodalError, match="task must be one of caption, vqa-open"):
        MultimodalPredictor(label="y", task="summarise")
    with pytest.raises(PolymodalError, match="one text column"):
        MultimodalPredictor(label=["a", "b"], task="caption")


@pytest.mark.slow
def test_vqa_open_needs_question_and_uses_it(tmp_path):
    """The answer depends on the question: "what color" → the colour, "how many" → a number."""
    from conftest import write_image

    from polymodal import MultimodalPredictor
    from polymodal.errors import DataError

    (tmp_path / "imgs").mkdir()
    rows = []
    for i in range(36):
        color = ["red", "blue", "green"][i % 3]
        write_image(tmp_path / "imgs" / f"{i}.png", color, seed=i)
        rows.append({"image": f"imgs/{i}.png", "question": "what color is the square?", "answer": color,
                     "answer_type": "open"})
        rows.append({"image": f"imgs/{i}.png", "question": "is there a square in the picture?", "answer": "yes",
                     "answer_type": "closed"})
    df = pd.DataFrame(rows)
    df.attrs["base_dir"] = str(tmp_path)
    with pytest.raises(DataError, match="vqa-open needs an image column and a question"):
        MultimodalPredictor(label="answer", task="vqa-open", verbose=False, **FAST).fit(df.drop(columns="question"))
    opts = {**FAST, "encoder_opts": {**FAST["encoder_opts"], "text": {"num_layers": 1, "max_length": 12}}}
    p = MultimodalPredictor(label="answer", task="vqa-open", verbose=False, **opts).fit(df)
    m = p.evaluate(df)
    assert m["accuracy"] >= 0.9 and m["accuracy_open"] >= 0.85 and m["accuracy_closed"] == 1.0
    assert m["rows_open"] == 36 and "answer_type" not in p.prep.inputs


def test_caption_model_is_served(captioner):
    """`polymodal serve` on a caption run: /predict answers the generated caption of an uploaded image."""
    from fastapi.testclient import TestClient

    from polymodal import MultimodalPredictor
    from polymodal.data.readers import read_table
    from polymodal.serve.app import create_app

    p, root = captioner
    q = MultimodalPredictor.load(root / "run")
    df = read_table(root / "train.csv")
    with TestClient(create_app(q)) as c:
        for i in (0, 1):
            png = (root / "imgs" / f"{i}.png").read_bytes()
            r = c.post("/predict", files={"image": (f"{i}.png", png, "image/png")})
            assert r.status_code == 200, r.text
            assert r.json()["prediction"] == q.predict(df.iloc[[i]]).iloc[0] and r.json()["probabilities"] is None
        assert c.get("/schema").json()["label"] == "caption"
