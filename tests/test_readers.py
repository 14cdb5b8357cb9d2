from __future__ import annotations

import pandas as pd
import pytest

from polymodal.data.readers import read_table
from polymodal.errors import DataError


@pytest.mark.parametrize("ext", ["csv", "tsv", "jsonl", "parquet"])
def test_formats_round_trip(tmp_path, ext):
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    path = tmp_path / f"t.{ext}"
    if ext == "csv":
        df.to_csv(path, index=False)
    elif ext == "tsv":
        df.to_csv(path, index=False, sep="\t")
    elif ext == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    out = read_table(path)
    assert out.to_dict("list") == {"a": [1, 2], "b": ["x", "y"]}
    assert out.attrs["base_dir"] == str(tmp_path.resolve())


def test_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="table not found"):
        read_table(tmp_path / "missing.csv")
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(DataError, match="unsupported table format"):
        read_table(tmp_path / "t.xlsx")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty") as e:
        read_table(tmp_path / "empty.csv")
    assert "empty.csv" in str(e.value)
    (tmp_path / "header.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="no rows"):
        read_table(tmp_path / "header.csv")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="could not parse"):
        read_table(tmp_path / "bad.jsonl")
