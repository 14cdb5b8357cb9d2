"""The server's edges on a model with an image, a text, a numeric and a categorical input.

Property-based API testing with schemathesis against the server's own OpenAPI schema (zero 5xx over at least
1,000 generated requests), and the text-length bound: long texts are refused with a clear 413, and a text is
tokenised in its request's worker so that the micro-batcher receives only the prefix the model reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient  # noqa: E402

from polymodal import MultimodalPredictor  # noqa: E402
from polymodal.serve.app import create_app  # noqa: E402
from polymodal.serve.inputs import RowBuilder  # noqa: E402

FAST = dict(max_epochs=3, batch_size=16, lr=3e-3, patience=3, progress=False)
WORDS = {"red": ["crimson", "ruby", "cherry"], "blue": ["navy", "azure", "cobalt"]}
MIN_REQUESTS = 1000  # the figure docs/reliability.md reports


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[MultimodalPredictor, Path]:
    """small-cnn image (32 px) + MiniLM cut to 1 layer + numeric `size` + categorical `shop` → red/blue."""
    import torch
    from conftest import color_table

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("serve_schema")
    color_table(root, n=48, caption_words=WORDS)
    p = MultimodalPredictor(label="label", path=root / "run", encoders={"image": "small-cnn"},
                            encoder_opts={"image": {"image_size": 32}, "text": {"num_layers": 1}},
                            column_types={"caption": "text"}, verbose=False, **FAST)
    p.fit(root / "train.csv")
    return MultimodalPredictor.load(p.path), root


class TinySearcher:
    """A fixed four-item gallery ranked by shared words; refuses vector queries (a 422 path)."""

    modalities = ("text", "image")
    captions = ["red square", "blue square", "red circle", "green tree"]

    def __call__(self, query: dict) -> list[dict]:
        if "vector" in query:
            raise ValueError("vector queries are not supported here")
        words = set(query.get("text", "").split())
        ranked = sorted(range(4), key=lambda i: -len(words & set(self.captions[i].split())))
        return [{"id": i, "caption": self.captions[i], "score": float(len(words & set(self.captions[i].split())))}
                for i in ranked[: query["k"]]]


# ---- property-based: schemathesis over the OpenAPI schema --------------------------------------------------------
def test_schemathesis_no_server_errors(trained):
    """Valid and invalid requests generated from /openapi.json, for every operation and body type: never a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    app = create_app(trained[0], searcher=TinySearcher(), max_wait_ms=1, max_text_chars=2000)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # schemathesis runs the app's lifespan
    failures, statuses = [], []

    def run(operation, media_type: str | None, mode: GenerationMode, n: int) -> None:
        @settings(max_examples=n, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode, media_type=media_type))
        def check(case):
            response = case.call()
            statuses.append((case.method, case.path, media_type, response.status_code))
            if response.status_code >= 500:
                failures.append((case.method, case.path, media_type, response.status_code, response.text[:300]))

        check()

    for result in schema.get_all_operations():
        operation = result.ok()
        body = operation.definition.raw.get("requestBody", {}).get("content", {})
        for media_type in body:
            for mode in GenerationMode:  # valid bodies, then bodies that break the schema
                run(operation, media_type, mode, 120)
        if not body:  # the GETs take no input: a few calls each
            run(operation, None, GenerationMode.POSITIVE, 5)
    print(f"schemathesis: {len(statuses)} requests, {len(failures)} 5xx, statuses "
          f"{sorted({s for *_, s in statuses})}")
    assert not failures, failures[:3]
    assert len(statuses) >= MIN_REQUESTS
    answered = {(m, p, s) for m, p, _, s in statuses}
    assert {("POST", "/predict", 200), ("POST", "/search", 200), ("POST", "/predict", 422)} <= answered


# ---- text length and tokenisation off the batching path ----------------------------------------------------------
@pytest.fixture(scope="module")
def client(trained):
    with TestClient(create_app(trained[0], max_wait_ms=2, max_text_chars=50_000)) as c:
        yield c


def long_text(n_chars: int) -> str:
    words = WORDS["red"] + WORDS["blue"] + ["a", "thing", "Ünïcödé", "!"]
    rng = np.random.default_rng(0)
    out = " ".join(rng.choice(words, size=n_chars // 4))
    return out[:n_chars]


@pytest.mark.parametrize("field, how", [("caption", "json"), ("caption", "form"), ("shop", "json")])
def test_text_over_the_limit_is_413_naming_field_and_limit(client, field, how):
    value = "x" * 50_001
    r = client.post("/predict", json={field: value}) if how == "json" else client.post("/predict",
                                                                                      data={field: value})
    assert r.status_code == 413, r.text
    assert r.json()["field"] == field
    assert f"column '{field}'" in r.json()["detail"] and "50,000" in r.json()["detail"]
    assert client.post("/predict", json={field: "x" * 50_000}).status_code == 200  # at the limit: answered


def test_long_text_reaches_the_batcher_cut_and_answers_like_predict_proba(client, trained):
    p, root = trained
    text = long_text(45_000)
    seen = []
    batcher = client.app.state.batcher
    forward = batcher.fn
    batcher.fn = lambda items: seen.extend(items) or forward(items)
    try:
        r = client.post("/predict", json={"caption": text, "size": 0.3, "shop": "b"})
    finally:
        batcher.fn = forward
    assert r.status_code == 200, r.text
    (item,) = seen
    assert len(item["inputs"]["caption"]) < 1000  # the 64-token prefix, not 45,000 characters
    df = pd.DataFrame({"image": [np.nan], "caption": [text], "size": [0.3], "shop": ["b"]})
    expected = p.predict_proba(df).iloc[0]
    for cls, prob in r.json()["probabilities"].items():
        assert prob == pytest.approx(float(expected[cls]), abs=1e-5)


@pytest.mark.parametrize("text", ["", "\x00", "   a", "a   ", "unbelievably " * 200, "ÀÉÎ õü " * 100,
                                  "中文字符" * 300, "x" * 500, "a." * 400, "emoji 😀 " * 100,
                                  "word\u2028next " * 80, "nonexistentwordpiece" * 30])
def test_text_prefix_tokenises_like_the_whole_text(trained, text):
    """The Collator (batching path) gets the prefix; its token ids equal those of the whole text."""
    from polymodal.data.dataset import Collator

    p, _ = trained
    builder = RowBuilder(p.prep)
    key = next(k for k, s in p.prep.inputs.items() if s.modality == "text")
    item = builder.build({"caption": text})
    whole = builder.build({"caption": text})
    whole["inputs"][key] = text
    collate = Collator(p.prep)
    got, ref = collate([item])["inputs"][key], collate([whole])["inputs"][key]
    assert got["input_ids"].tolist() == ref["input_ids"].tolist()
    assert len(item["inputs"][key]) <= len(text)


# ---- /docs in a browser without a network ----------------------------------------------------------------------
def test_docs_render_in_a_browser_without_network(trained, tmp_path):
    """Swagger UI renders every operation in headless Chromium while all requests off the server are refused."""
    import json
    import os
    import subprocess

    pytest.importorskip("fastapi_offline")
    from test_serve_browser import BROWSER_DIR, CHROMIUM, _requirements, running

    if _requirements() is not None:
        pytest.skip(_requirements())
    with running(create_app(trained[0], searcher=TinySearcher())) as url:
        proc = subprocess.run(["node", str(BROWSER_DIR / "docs.mjs"), url, str(tmp_path / "docs.png")],
                              capture_output=True, text=True, timeout=120, cwd=BROWSER_DIR,
                              env={**os.environ, "CHROMIUM": CHROMIUM})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["external"] == []
    assert {"POST /predict", "POST /search", "GET /schema", "GET /ready"} <= set(out["operations"]), out
    assert out["title"] and out["title"].startswith("polymodal")
