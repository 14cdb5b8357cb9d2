"""End to end: a real uvicorn server on loopback, the web page driven in headless Chromium (playwright-core).

Needs Debian's chromium, node and tests/browser/node_modules (scripts/install_browser.sh installs them);
skipped with the reason when any is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

BROWSER_DIR = Path(__file__).parent / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _requirements() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"needs Chromium at {CHROMIUM} (scripts/install_browser.sh: apt-get install -y chromium)"
    if shutil.which("node") is None:
        return "needs node to run playwright-core"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").exists():
        return "needs playwright-core in tests/browser/node_modules (scripts/install_browser.sh runs npm ci)"
    return None


pytestmark = pytest.mark.skipif(_requirements() is not None, reason=_requirements() or "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import torch
    from test_serve import train_tiny

    from polymodal import MultimodalPredictor
    from polymodal.serve.app import create_app

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("browser")
    predictor = MultimodalPredictor.load(train_tiny(root).path)
    with running(create_app(predictor)) as url:
        yield url, predictor, root


@contextmanager
def running(app):
    """Serve `app` with uvicorn on a free loopback port in a thread; yields its URL."""
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def drive(url: str, image: Path, shot: Path, **fields) -> dict:
    cmd = ["node", str(BROWSER_DIR / "e2e.mjs"), url, str(image), str(shot), *[f"{k}={v}" for k, v in fields.items()]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=BROWSER_DIR,
                          env={**os.environ, "CHROMIUM": CHROMIUM})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("index", [0, 1])
def test_upload_type_click_see_answer(server, tmp_path, index):
    import pandas as pd

    url, predictor, root = server
    df = pd.read_csv(root / "train.csv").iloc[[index]]
    df.attrs["base_dir"] = str(root)
    expected = predictor.predict(df).iloc[0]
    out = drive(url, root / "imgs" / f"{index}.png", tmp_path / "page.png",
                size=df["size"].iloc[0], shop=df["shop"].iloc[0])
    assert out["error"] is None
    assert out["prediction"] == expected == df["label"].iloc[0]
    assert sorted(out["bars"]) == ["blue", "red"] and out["bars"][0] == expected  # best class listed first
    assert "Predicts “label”" in out["info"]
    assert (tmp_path / "page.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def search_server(tmp_path_factory):
    """A search-only server: an image↔caption alignment run and its gallery index."""
    pytest.importorskip("faiss")
    import torch
    from test_align_pipeline import caption_table

    from polymodal.retrieval.pipeline import AlignConfig, AlignedModel
    from polymodal.serve.app import app_from_run
    from polymodal.serve.search import load_index_searcher

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("search")
    train, gallery = caption_table(root, 45), caption_table(root, 15, start=100)
    model = AlignedModel.fit(train, AlignConfig(left="image", right="caption", epochs=15, batch_size=32,
                                                embed_dim=64, encoder_opts={"image": {"image_size": 32}}),
                             root / "run", valid=gallery, log=lambda m: None)
    model.build_index(gallery, "image", id_column="id").save(root / "g.index")
    app = app_from_run(root / "run", searcher=load_index_searcher(root / "g.index", root / "run"))
    with running(app) as url:
        yield url, root


def test_search_page_text_and_image_queries(search_server, tmp_path):
    url, root = search_server
    cmd = ["node", str(BROWSER_DIR / "search.mjs"), url, "a green tree", str(root / "imgs" / "101.png"),
           str(tmp_path / "search.png")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=BROWSER_DIR,
                          env={**os.environ, "CHROMIUM": CHROMIUM})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] is None and out["predictHidden"] and out["audioHidden"]
    assert "Searches a gallery" in out["info"]
    # gallery ids 100..114 cycle red, blue, green: green items are the ids ≡ 2 (mod 3); captions show "#id"
    ids = [int(c.split("#")[1].split()[0]) for c in out["text_results"]]
    assert len(ids) == 3 and all(i % 3 == 2 for i in ids) and out["thumbnails"] == 3
    assert out["image_results"][0].split("#")[1].startswith("101 ")  # the query image finds itself first
