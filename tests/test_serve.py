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


def test_microbatcher_error_reaches_only_the_failing_caller_and_worker_survives():
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
    # the failed batch runs again one item at a time: only the bad item's caller gets the error
    assert isinstance(res[0], ValueError) and res[1] == 2 and after == 3


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


# ---- the server's edges (issue 16); schemathesis and text limits: tests/test_serve_schema.py --------------------
@pytest.mark.parametrize("body", [
    b'{"size": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # past the parser's recursion limit
    b"[" * 100_000 + b"]" * 100_000,
    b'{"size": ' + b"[" * 33 + b"]" * 33 + b"}",  # one level past MAX_JSON_DEPTH
])
def test_deeply_nested_json_is_a_clear_422(client, body):
    r = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "nested too deeply" in r.json()["detail"] and "32" in r.json()["detail"]
    r = client.post("/predict", content=b'{"size": [[1]]}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "expected a number" in r.json()["detail"]  # within the depth limit


def fail_on_boom(builder, monkeypatch) -> None:
    """/predict with shop=boom raises a bare RuntimeError inside the app (a server bug, not the client's)."""
    build = builder.build

    def maybe_fail(values, *args, **kwargs):
        if values.get("shop") == "boom":
            raise RuntimeError("a bug")
        return build(values, *args, **kwargs)

    monkeypatch.setattr(builder, "build", maybe_fail)


@pytest.fixture
def failing_build(client, monkeypatch):
    fail_on_boom(client.app.state.builder, monkeypatch)


def test_unhandled_error_is_a_500_counted_in_metrics(client, failing_build):
    before = parse_metrics(client.get("/metrics").text)
    r = client.post("/predict", json={"shop": "boom"})  # the test client would raise if the error left the app
    assert r.status_code == 500 and "internal server error" in r.json()["detail"]
    after = parse_metrics(client.get("/metrics").text)
    key = 'polymodal_requests_total{endpoint="/predict",status="500"}'
    assert after[key] - before.get(key, 0) == 1
    count = 'polymodal_request_latency_seconds_count{endpoint="/predict"}'
    assert after[count] - before[count] == 1
    assert client.post("/predict", json={"shop": "a"}).status_code == 200  # the server goes on


def test_keep_alive_connection_survives_a_422_and_a_500(trained, monkeypatch):
    """Over real HTTP (uvicorn): an error answered inside the app leaves the keep-alive connection open."""
    import http.client

    from test_serve_browser import running

    app = create_app(trained[0], max_wait_ms=1)
    fail_on_boom(app.state.builder, monkeypatch)
    with running(app) as url:
        conn = http.client.HTTPConnection(url.split("//")[1].rstrip("/"), timeout=30)
        answers, sockets = [], set()
        for body in (b"[" * 100_000 + b"]" * 100_000, b'{"shop": "boom"}', b'{"shop": "a"}'):
            conn.request("POST", "/predict", body=body, headers={"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            answers.append((resp.status, resp.getheader("connection")))
            sockets.add(id(conn.sock))
        conn.close()
    assert [a[0] for a in answers] == [422, 500, 200]
    assert all(c != "close" for _, c in answers) and len(sockets) == 1, answers


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (no pixel data follows): enough for PIL to read the size."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side, needle", [(20_000, "too many pixels"),  # past PIL's own limit (179 Mpx)
                                          (10_000, "10000x10000 pixels")])  # past the server's 40 Mpx
def test_huge_image_is_refused_for_its_pixel_count(client, side, needle):
    r = client.post("/predict", files={"image": ("big.png", png_header(side, side), "image/png")})
    assert r.status_code == 413, r.text
    assert needle in r.json()["detail"] and "40,000,000" in r.json()["detail"]
    assert "not a PNG" not in r.json()["detail"] and r.json()["field"] == "image"


def external_refs(page: str) -> list[str]:
    refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)|url\s*:\s*["\']([^"\']+)', page)
    return [u for pair in refs for u in pair if u and re.match(r"^(?:[a-z]+:)?//", u, re.I)]


def test_docs_are_served_offline(client, trained, monkeypatch):
    pytest.importorskip("fastapi_offline")
    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text and "/openapi.json" in page.text
    assert external_refs(page.text) == [] and "http" not in page.text
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"):
        asset = client.get(f"/docs/assets/{name}")
        assert asset.status_code == 200 and len(asset.content) > 500, name
    assert client.get("/docs/assets/index.html").status_code == 404  # a fixed list of files
    assert client.get("/docs/assets/..%2F__init__.py").status_code == 404
    assert client.get("/redoc").status_code == 404  # FastAPI's CDN page is off
    import polymodal.serve.docs as docs

    monkeypatch.setattr(docs, "swagger_ui_dir", lambda: None)  # without fastapi-offline: a plain page
    with TestClient(create_app(trained[0])) as c:
        page = c.get("/docs").text
    assert "POST /predict" in page and "/openapi.json" in page and "fastapi-offline" in page
    assert external_refs(page) == [] and "http" not in page and "<script" not in page


# ---- non-finite outputs --------------------------------------------------------------------------------------
def nan_weights(predictor) -> dict:
    """Set every weight of the predictor's model to NaN; returns the original state to restore."""
    import torch

    state = {k: v.clone() for k, v in predictor.model.state_dict().items()}
    with torch.no_grad():
        for param in predictor.model.parameters():
            param.fill_(float("nan"))
    return state


def test_nan_weights_are_never_a_prediction(trained):
    p, _ = trained
    q = MultimodalPredictor.load(p.path)
    nan_weights(q)
    with TestClient(create_app(q)) as c:
        ready = c.get("/ready")
        assert ready.status_code == 503 and "not finite" in ready.json()["detail"]
        r = c.post("/predict", json={"size": 0.2, "shop": "a"})
        assert r.status_code == 503 and "not finite" in r.json()["detail"] and "Restart" in r.json()["detail"]
        m = parse_metrics(c.get("/metrics").text)
    assert m["polymodal_model_ready"] == 0
    assert m['polymodal_requests_total{endpoint="/predict",status="503"}'] == 1


def test_weights_turning_nan_make_the_server_not_ready_until_finite_again(trained):
    p, root = trained
    q = MultimodalPredictor.load(p.path)
    with TestClient(create_app(q, max_wait_ms=1)) as c:
        assert c.get("/ready").status_code == 200
        state = nan_weights(q)
        r = post_row(c, root, 0, size=0.1, shop="a")
        assert r.status_code == 503 and "not finite" in r.json()["detail"]  # never 200 with null probabilities
        assert c.get("/ready").status_code == 503
        assert parse_metrics(c.get("/metrics").text)["polymodal_model_ready"] == 0
        q.model.load_state_dict(state)  # a transient fault: the next probe (by /ready) finds finite outputs
        assert c.get("/ready").status_code == 200
        assert post_row(c, root, 0, size=0.1, shop="a").status_code == 200


def test_a_row_that_drives_the_output_non_finite_is_a_422(client):
    """The probe row is finite, so the model is sound: the non-finite answer is this row's (422, still ready)."""
    batcher = client.app.state.batcher
    forward = batcher.fn

    def nan_for_big(items):
        out = forward(items)
        for item, answer in zip(items, out):
            if item["inputs"]["tabular"]["numeric"][0] > 100:
                answer["probabilities"] = {k: float("nan") for k in answer["probabilities"]}
        return out

    batcher.fn = nan_for_big
    try:
        r = client.post("/predict", json={"size": 1e6})
    finally:
        batcher.fn = forward
    assert r.status_code == 422 and "not finite" in r.json()["detail"], r.text
    assert client.get("/ready").status_code == 200
