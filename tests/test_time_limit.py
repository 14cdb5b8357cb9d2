"""`--time-limit` on a single network (--preset fast) counts the whole fit: preparing, training, scoring."""

from __future__ import annotations

import pytest

from polymodal.training.pipeline import SCORING_SHARE, training_budget


def test_training_gets_the_limit_less_preparation_and_a_scoring_share():
    said: list[str] = []
    assert training_budget(None, 50.0, said.append) is None  # no limit: train to max_epochs
    assert training_budget(120.0, 30.0, said.append) == pytest.approx(120 * (1 - SCORING_SHARE) - 30)
    assert not said


def test_preparation_past_the_limit_trains_one_step_and_says_so():
    said: list[str] = []
    assert training_budget(60.0, 58.0, said.append) == 1.0
    assert len(said) == 1 and "preparing took 58s" in said[0] and "past the limit" in said[0]
