"""POST /recommend (polymodal/serve/recommend.py) over a small fitted Recommender: answers equal top_k,
client mistakes are 4xx naming the field."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from test_recommend_front import MODEL, TRAIN, _tables  # noqa: E402

from polymodal.recommend.recommender import Recommender  # noqa: E402
from polymodal.serve.recommend import recommend_app  # noqa: E402


@pytest.fixture(scope="module")
def client():
    inter, users, items = _tables()
    rec = Recommender.fit(inter, users, items, model=MODEL, train=TRAIN, log=lambda s: None)
    return rec, TestClient(recommend_app(rec))


def test_recommend_answers_top_k(client):
    rec, c = client
    r = c.post("/recommend", json={"user": 45, "k": 3})
    assert r.status_code == 200
    assert r.json() == {"user": "45", "items": rec.top_k("45", 3)}
    seen = c.post("/recommend", json={"user": "45", "k": 26, "include_seen": True}).json()["items"]
    assert len(seen) == 26
    assert c.get("/schema").json()["items"] == 26


@pytest.mark.parametrize("body, field", [({"user": "nobody"}, "user"), ({"user": 1, "k": 0}, "k"),
                                         ({"user": 1, "k": 10_000}, "k"), ({"user": 1, "x": 1}, "x"),
                                         ({"user": True}, "user"), ({"k": 3}, "user"),
                                         ({"user": 1, "include_seen": "yes"}, "include_seen")])
def test_recommend_rejects_bad_requests(client, body, field):
    r = client[1].post("/recommend", json=body)
    assert r.status_code == 422 and r.json()["field"] == field, r.json()
    if field == "user" and body.get("user") == "nobody":
        assert "unknown user id 'nobody'" in r.json()["detail"]


def test_recommend_wants_json(client):
    c = client[1]
    assert c.post("/recommend", content=b"user=1", headers={"content-type": "text/plain"}).status_code == 415
    assert c.post("/recommend", content=b"{", headers={"content-type": "application/json"}).status_code == 422
    assert c.post("/recommend", json=[1, 2]).status_code == 422


def test_a_recommendation_run_folder_is_served_and_on_the_main_cli(client, tmp_path):
    from typer.testing import CliRunner

    from polymodal.cli import app
    from polymodal.serve.app import app_from_run

    rec, _ = client
    rec.save(tmp_path / "rec")
    with TestClient(app_from_run(tmp_path / "rec")) as c:
        assert c.post("/recommend", json={"user": 45, "k": 3}).json()["items"] == rec.top_k("45", 3)
    r = CliRunner().invoke(app, ["recommend", "top-k", str(tmp_path / "rec"), "--user", "45", "-k", "3"])
    assert r.exit_code == 0, r.output
