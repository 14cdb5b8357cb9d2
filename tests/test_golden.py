"""Golden outputs: every built-in encoder and `Preprocessor.fit` recompute the numbers stored under
tests/data/golden/ (written by its make_golden.py, whose docstring says how and when to regenerate them).

Tolerance: float32 CPU results are compared at atol = rtol = 1e-5 (run-to-run results on one machine are
bit-identical; the slack absorbs a different BLAS/oneDNN kernel choice, e.g. another thread count or CPU).
Preprocessing statistics are compared exactly: they are float64 sums that must not move at all.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
ATOL = RTOL = 1e-5

_spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
make_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_golden)


@pytest.mark.parametrize("case", list(make_golden.CASES))
def test_encoder_outputs_match_golden(case, tmp_path):
    try:
        got = make_golden.compute(case, tmp_path)
    except make_golden.Unavailable as exc:
        pytest.skip(str(exc))
    ref_file = GOLDEN / f"{case}.npz"
    if not ref_file.exists():
        pytest.fail(f"no golden file {ref_file.name}: run tests/data/golden/make_golden.py {case}")
    ref = dict(np.load(ref_file))
    assert sorted(got) == sorted(ref)
    for key in sorted(ref, key=lambda k: not k.startswith("input")):  # inputs first: they locate a change
        assert got[key].shape == ref[key].shape, key
        if ref[key].dtype.kind == "i":
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{case}: {key}")
        else:
            np.testing.assert_allclose(got[key], ref[key], rtol=RTOL, atol=ATOL, err_msg=f"{case}: {key}")


def test_preprocessor_statistics_match_golden():
    ref = json.loads((GOLDEN / "preprocess.json").read_text())
    got = make_golden.preprocess_states()
    assert sorted(got) == sorted(ref)
    for name in ref:
        assert got[name] == ref[name], name
