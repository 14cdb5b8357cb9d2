"""HTTP API (polymodal.serve) on a tiny trained image + tabular predictor, through the ASGI test client."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from fastapi.testclient import TestClient  # noqa: E402

from polymodal import MultimodalPredictor  # noqa: E402
from polymodal.serve.app import create_app  # noqa: E402
from polymodal.serve.batching import MicroBatcher  # noqa: E402

FAST = dict(max_epochs=6, batch_size=16, lr=3e-3, patience=6, progress=False)


def train_tiny(root: Path) -> MultimodalPredictor:
    """small-cnn image (32 px) + numeric `size` + categorical `shop` → `label` (red/blue), about 3 s."""
    from conftest import color_table

    color_table(root)
    p = MultimodalPredictor(label="label", path=root / "run", encoders={"image": "small-cnn"},
                            encoder_opts={"image": {"image_size": 32}}, verbose=False, **FAST)
    return p.fit(root / "train.csv")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("serve")
    return MultimodalPredictor.load(train_tiny(root).path), root


@pytest.fixture(scope="module")
def client(trained):
    with TestClient(create_app(trained[0], max_wait_ms=2)) as c:
        yield c


def png_bytes(root: Path, i: int) -> bytes:
    return (root / "imgs" / f"{i}.png").read_bytes()


def post_row(client, root, i: int | None, **fields):
    files = {"image": (f"{i}.png", png_bytes(root, i), "image/png")} if i is not None else None
    return client.post("/predict", files=files, data={k: str(v) for k, v in fields.items()})


# ---- predictions -----------------------------------------------------------------------------------------
def test_predict_with_image_upload_matches_predict_proba(client, trained):
    p, root = trained
    df = pd.read_csv(root / "train.csv").head(6)
    df.attrs["base_dir"] = str(root)
    expected = p.predict_proba(df)
    for i, row in df.iterrows():
        r = post_row(client, root, i, size=row["size"], shop=row["shop"])
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["prediction"] == expected.columns[int(np.argmax(expected.loc[i]))]
        assert set(out["probabilities"]) == {"blue", "red"}
        for cls in expected.columns:
            assert out["probabilities"][cls] == pytest.approx(float(expected.loc[i, cls]), abs=1e-5)
        assert out["latency_ms"] > 0


@pytest.mark.parametrize("drop", ["image", "tabular"])
def test_missing_modality_matches_predict_proba(client, trained, drop):
    p, root = trained
    row = pd.read_csv(root / "train.csv").iloc[[3]].copy()
    row.attrs["base_dir"] = str(root)
    if drop == "image":
        row["image"] = np.nan
        r = post_row(client, root, None, size=row["size"].iloc[0], shop=row["shop"].iloc[0])
    else:
        row[["size", "shop"]] = [np.nan, np.nan]
        r = post_row(client, root, 3)
    assert r.status_code == 200, r.text
    expected = p.predict_proba(row).iloc[0]
    for cls, prob in r.json()["probabilities"].items():
        assert prob == pytest.approx(float(expected[cls]), abs=1e-5)


def test_json_body_for_tabular_fields(client, trained):
    p, root = trained
    r = client.post("/predict", json={"size": 0.25, "shop": "b"})
    assert r.status_code == 200, r.text
    df = pd.DataFrame({"image": [np.nan], "size": [0.25], "shop": ["b"]})
    expected = p.predict_proba(df).iloc[0]
    assert r.json()["probabilities"]["red"] == pytest.approx(float(expected["red"]), abs=1e-5)
    # an unseen category is allowed (it maps to the unknown id, as in training)
    assert client.post("/predict", json={"shop": "zzz"}).status_code == 200


# ---- validation --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, status, needle", [
    (dict(data={"colour": "red"}), 422, "unknown field 'colour'"),
    (dict(json={"size": 1, "weight": 2}), 422, "unknown field 'weight'"),
    (dict(data={"size": "abc"}), 422, "not a number"),
    (dict(json={"size": "abc"}), 422, "expected a number"),
    (dict(json={"size": True}), 422, "expected a number"),
    (dict(data={"size": "inf"}), 422, "finite"),
    (dict(json={"size": 1e308}), 422, "out of range"),
    (dict(data={}), 422, "no inputs"),
    (dict(json={}), 422, "no inputs"),
    (dict(json=[1, 2]), 422, "must be an object"),
    (dict(data={"image": "/etc/passwd"}), 422, "never read"),
    (dict(json={"image": "imgs/0.png"}), 422, "never read"),
    (dict(files={"size": ("x.txt", b"1.0", "text/plain")}), 422, "not a file"),
    (dict(files={"image": ("a.txt", b"hello", "text/plain")}), 415, "content type 'text/plain'"),
    (dict(files={"image": ("a.png", b"not an image at all", "image/png")}), 422, "cannot decode"),
    (dict(files={"image": ("a.png", b"", "image/png")}), 422, "empty"),
    (dict(content=b"size=1", headers={"content-type": "text/plain"}), 415, "multipart/form-data"),
    (dict(content=b"{not json", headers={"content-type": "application/json"}), 422, "not valid JSON"),
])
def test_validation_errors(client, kwargs, status, needle):
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_truncated_image_is_422(client, trained):
    _, root = trained
    data = png_bytes(root, 0)
    r = client.post("/predict", files={"image": ("a.png", data[: len(data) // 2], "image/png")})
    assert r.status_code == 422 and "image" in r.json()["detail"]


def test_file_size_and_pixel_limits(trained):
    p, root = trained
    with TestClient(create_app(p, max_pixels=500)) as c:
        r = c.post("/predict", files={"image": ("0.png", png_bytes(root, 0), "image/png")})  # 32x32 > 500 px
        assert r.status_code == 413 and "pixels" in r.json()["detail"]
    with TestClient(create_app(p, max_file_bytes=2000)) as c:
        r = c.post("/predict", files={"image": ("big.png", b"\x89PNG" + b"0" * 5000, "image/png")})
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        huge = b"x" * (2 * 1024 * 1024)  # over the whole-body limit: refused from Content-Length
        r = c.post("/predict", content=huge, headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_server_never_opens_request_paths(client, trained, monkeypatch):
    import builtins

    _, root = trained
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    path = str(root / "imgs" / "0.png")
    assert client.post("/predict", data={"image": path}).status_code == 422
    assert client.post("/predict", data={"size": "1", "shop": path}).status_code == 200  # just an unseen category
    assert path not in opened


def test_cors_off_by_default_and_on_when_asked(client, trained):
    h = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/predict", headers=h).headers
    with TestClient(create_app(trained[0], cors_origins=["http://ok.example"])) as c:
        r = c.options("/predict", headers={**h, "Origin": "http://ok.example"})
        assert r.headers.get("access-control-allow-origin") == "http://ok.example"


# ---- ops endpoints -------------------------------------------------------------------------------------------
def test_health_ready_schema_and_page(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"ready": True}
    s = client.get("/schema").json()
    assert s["label"] == "label" and s["classes"] == ["blue", "red"] and s["search"] is None
    by_name = {i["name"]: i for i in s["inputs"]}
    assert by_name["image"]["input"] == "file" and by_name["image"]["accept"] == "image/*"
    assert by_name["size"]["input"] == "number" and by_name["shop"]["choices"] == ["a", "b", "c"]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    spec = client.get("/openapi.json").json()
    props = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert props["properties"]["image"]["format"] == "binary"
    assert "/search" not in spec["paths"]


def test_not_ready_before_startup(trained):
    c = TestClient(create_app(trained[0]))  # no `with`: the lifespan (model warm-up) has not run
    assert c.get("/health").status_code == 200
    assert c.get("/ready").status_code == 503


LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (-?[0-9.e+-]+|\+Inf|NaN)$')


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.strip().splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ .+$", line), line
            continue
        m = LINE.match(line)
        assert m, f"not Prometheus text format: {line!r}"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def test_metrics_prometheus_format(client):
    client.get("/health")
    client.post("/predict", json={"size": "x"})
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = parse_metrics(r.text)
    assert m['polymodal_requests_total{endpoint="/health",status="200"}'] >= 1
    assert m['polymodal_requests_total{endpoint="/predict",status="422"}'] >= 1
    assert m["polymodal_model_ready"] == 1
    prefix = 'polymodal_request_latency_seconds_bucket{endpoint="/health"'
    buckets = [(k, v) for k, v in m.items() if k.startswith(prefix)]
    values = [v for _, v in buckets]
    assert values == sorted(values) and buckets[-1][0].endswith('le="+Inf"}')
    assert values[-1] == m['polymodal_request_latency_seconds_count{endpoint="/health"}']
    assert 'polymodal_batch_size_bucket{le="+Inf"}' in m


# ---- micro-batching ------------------------------------------------------------------------------------------
def test_microbatcher_groups_concurrent_items():
    sizes = []

    async def main():
        b = MicroBatcher(lambda xs: [x * 10 for x in xs], max_batch=4, max_wait_ms=200, on_batch=sizes.append)
        await b.start()
        out = await asyncio.gather(*(b.submit(i) for i in range(10)))
        await b.stop()
        return out

    assert asyncio.run(main()) == [i * 10 for i in range(10)]
    assert sizes == [4, 4, 2]


def test_microbatcher_error_reaches_every_caller_and_worker_survives():
    calls = []

    def fn(xs):
        calls.append(list(xs))
        if any(x < 0 for x in xs):
            raise ValueError("bad")
        return xs

    async def main():
        b = MicroBatcher(fn, max_batch=8, max_wait_ms=50)
        await b.start()
        res = await asyncio.gather(b.submit(-1), b.submit(2), return_exceptions=True)
        after = await b.submit(3)
        await b.stop()
        return res, after

    res, after = asyncio.run(main())
    assert all(isinstance(r, ValueError) for r in res) and after == 3


def test_concurrent_requests_are_batched_and_equal_sequential(trained):
    p, root = trained
    n = 16
    with TestClient(create_app(p, max_batch=8, max_wait_ms=100)) as c:
        seq = [post_row(c, root, i, size=0.1 * i, shop="abc"[i % 3]).json()["probabilities"] for i in range(n)]
        before = parse_metrics(c.get("/metrics").text)
        with ThreadPoolExecutor(n) as ex:
            par = list(ex.map(lambda i: post_row(c, root, i, size=0.1 * i, shop="abc"[i % 3]), range(n)))
        after = parse_metrics(c.get("/metrics").text)
    assert all(r.status_code == 200 for r in par)
    for s, r in zip(seq, par):
        for cls in s:
            assert r.json()["probabilities"][cls] == pytest.approx(s[cls], abs=1e-5)
    forwards = after["polymodal_batch_size_count"] - before["polymodal_batch_size_count"]
    rows = after["polymodal_batch_size_sum"] - before["polymodal_batch_size_sum"]
    singles = after['polymodal_batch_size_bucket{le="1"}'] - before['polymodal_batch_size_bucket{le="1"}']
    assert rows == n and forwards < n and singles < forwards, (forwards, singles)


def test_batching_off_runs_one_row_per_forward(trained):
    p, root = trained
    with TestClient(create_app(p, batching=False)) as c:
        with ThreadPoolExecutor(6) as ex:
            assert all(r.status_code == 200 for r in ex.map(lambda i: post_row(c, root, i), range(6)))
        m = parse_metrics(c.get("/metrics").text)
    assert m['polymodal_batch_size_bucket{le="1"}'] == m["polymodal_batch_size_count"] == 6


# ---- search ----------------------------------------------------------------------------------------------------
class FakeSearcher:
    """Records queries; answers the k items of a fixed gallery whose caption shares most words with the text."""

    modalities = ("text", "image")

    def __init__(self) -> None:
        self.queries: list[dict] = []
        self.captions = ["red square", "blue square", "red circle", "green tree"]

    def __call__(self, query: dict) -> list[dict]:
        self.queries.append(query)
        if "vector" in query:
            raise ValueError("vector queries are not supported here")
        words = set(query.get("text", "").split())
        ranked = sorted(range(len(self.captions)), key=lambda i: -len(words & set(self.captions[i].split())))
        return [{"id": i, "score": np.float32(len(words & set(self.captions[i].split()))),
                 "caption": self.captions[i], "thumbnail": "data:image/png;base64,AAAA"}
                for i in ranked[: query["k"]]]


def test_search_endpoint_with_fake_searcher(trained):
    fake = FakeSearcher()
    with TestClient(create_app(trained[0], searcher=fake)) as c:
        r = c.post("/search", json={"text": "red circle", "k": 2})
        assert r.status_code == 200, r.text
        assert [x["caption"] for x in r.json()["results"]] == ["red circle", "red square"]
        assert r.json()["results"][0]["score"] == 2.0
        r = c.post("/search", data={"k": "1"}, files={"image": ("q.png", png_bytes(trained[1], 0), "image/png")})
        assert r.status_code == 200 and fake.queries[-1]["image"] == png_bytes(trained[1], 0)
        assert c.post("/search", json={"k": 3}).status_code == 422  # no query
        assert c.post("/search", json={"text": "x", "k": 0}).status_code == 422
        assert c.post("/search", json={"text": "x", "bogus": 1}).status_code == 422
        assert c.post("/search", json={"image": "/etc/passwd"}).status_code == 422
        r = c.post("/search", json={"vector": [1.0, 2.0]})  # the searcher refuses: its message comes back
        assert r.status_code == 422 and "vector" in r.json()["detail"]
        assert c.get("/schema").json()["search"] == {"modalities": ["text", "image"]}


def test_index_searcher_matches_brute_force():
    pytest.importorskip("faiss")
    from polymodal.retrieval.index import VectorIndex
    from polymodal.serve.search import IndexSearcher

    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(50, 8)).astype(np.float32)
    index = VectorIndex.build(vecs, model_id="m", ids=[f"g{i}" for i in range(50)],
                              metadata=[{"caption": f"item {i}"} for i in range(50)])
    q = rng.normal(size=8)
    out = IndexSearcher(index)({"vector": q.tolist(), "k": 5})
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    cos = unit @ (q / np.linalg.norm(q))
    best = np.argsort(-cos)[:5]
    assert [o["id"] for o in out] == [f"g{i}" for i in best]
    np.testing.assert_allclose([o["score"] for o in out], cos[best], atol=1e-5)
    assert out[0]["caption"] == f"item {best[0]}"
    with pytest.raises(Exception, match="8"):
        IndexSearcher(index)({"vector": [1.0, 2.0], "k": 1})


# ---- audio decoding from bytes ------------------------------------------------------------------------------
def test_audio_bytes_decode_like_files(tmp_path):
    from conftest import write_wave

    from polymodal.data.transforms import load_audio_features
    from polymodal.encoders import build_encoder
    from polymodal.serve.inputs import InputError, RowBuilder, Upload

    cfg = build_encoder("audio").preprocess_config()
    write_wave(tmp_path / "a.wav", 440)
    data = (tmp_path / "a.wav").read_bytes()
    got = RowBuilder.__new__(RowBuilder)._audio("clip", Upload(data, "audio/wav"), cfg)
    np.testing.assert_array_equal(got, load_audio_features(str(tmp_path / "a.wav"), cfg))
    with pytest.raises(InputError) as e:
        RowBuilder.__new__(RowBuilder)._audio("clip", Upload(b"RIFF0000WAVEjunk", "audio/wav"), cfg)
    assert e.value.status == 422
    with pytest.raises(InputError) as e:
        RowBuilder.__new__(RowBuilder)._audio("clip", Upload(data, "image/png"), cfg)
    assert e.value.status == 415


# ---- property-based: schemathesis over the OpenAPI spec ------------------------------------------------------
def test_openapi_fuzz_no_server_errors(trained):
    """Property-based requests generated from /openapi.json (valid and invalid bodies): never a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    app = create_app(trained[0], searcher=FakeSearcher(), max_wait_ms=1)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # schemathesis runs the app's lifespan
    failures, seen = [], set()
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=30, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case):
            response = case.call()
            seen.add((case.method, case.path, response.status_code))
            if response.status_code >= 500:
                failures.append((case.method, case.path, response.status_code, response.text[:200]))

        check()
    assert not failures, failures[:3]
    assert {("POST", "/predict", 200), ("POST", "/search", 200)} <= seen, sorted(seen)


def test_compressed_int8_run_loads_predicts_and_serves(trained, tmp_path):
    """A `polymodal compress --quantize int8` folder: MultimodalPredictor.load gives the onnxruntime predictor,
    and /predict answers with exactly its probabilities."""
    pytest.importorskip("onnxruntime")
    from polymodal.compress import OnnxPredictor, compress_run

    p, root = trained
    compress_run(p.path, tmp_path / "q8", train=root / "train.csv", quantize="int8", backend="onnx",
                 log=lambda m: None)
    q = MultimodalPredictor.load(tmp_path / "q8")
    assert isinstance(q, OnnxPredictor)
    df = pd.read_csv(root / "train.csv").head(4)
    df.attrs["base_dir"] = str(root)
    expected = q.predict_proba(df)
    assert (q.predict(df) == p.predict(df)).mean() >= 0.75
    with TestClient(create_app(q, max_wait_ms=2)) as c:
        for i, row in df.iterrows():
            r = post_row(c, root, i, size=row["size"], shop=row["shop"])
            assert r.status_code == 200, r.text
            for cls in expected.columns:
                assert r.json()["probabilities"][cls] == pytest.approx(float(expected.loc[i, cls]), abs=1e-5)
