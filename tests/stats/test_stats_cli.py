"""``lungvol stats 2x2``, ``lungvol stats hl`` and ``lungvol paper`` in-process."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from lungvol.cli import app

runner = CliRunner()


def test_2x2_json_has_the_documented_keys():
    res = runner.invoke(app, ["stats", "2x2", "10/56", "0/30", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert {"odds_ratio", "exact", "chi2_p", "fisher_p", "p", "p_method"} <= set(data)
    assert {"estimate", "ci_low", "ci_high", "method"} <= set(data["odds_ratio"])
    assert {"mue", "ci_low", "ci_high", "p", "sided"} <= set(data["exact"])
    assert round(data["odds_ratio"]["estimate"], 2) == 8.75
    assert round(data["odds_ratio"]["ci_low"], 2) == 1.72
    assert float(data["odds_ratio"]["ci_high"]) == float("inf")
    assert round(data["p"], 3) == 0.010
    assert data["exact"]["sided"] == 1
    assert round(data["fisher_p"], 3) == 0.013


def test_2x2_text_names_every_method():
    res = runner.invoke(app, ["stats", "2x2", "5/51", "6/30"])
    assert res.exit_code == 0, res.output
    for word in ("Wald", "exact MUE", "chi-square", "Fisher", "0.435 (0.120, 1.572)", "0.3134"):
        assert word in res.stdout


def test_2x2_not_estimable_and_two_sided():
    res = runner.invoke(app, ["stats", "2x2", "0/58", "0/34", "--json"])
    data = json.loads(res.stdout)
    assert data["p"] is None
    assert data["p_method"] == "not estimable"
    res = runner.invoke(app, ["stats", "2x2", "1/50", "0/30", "--json", "--two-sided"])
    assert json.loads(res.stdout)["exact"]["sided"] == 2


def test_2x2_bad_input_is_one_line_error():
    res = runner.invoke(app, ["stats", "2x2", "5/3", "0/30"])
    assert res.exit_code == 1
    assert "events cannot exceed n" in res.output
    assert "Traceback" not in res.output


def test_hl_from_value_files(tmp_path):
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("0.80\n0.83\n1.89\n1.04\n1.45\n1.38\n1.91\n1.64\n0.73\n1.46\nNA\n")
    b.write_text("value\n1.15\n0.88\n0.90\n0.74\n1.21\n")
    res = runner.invoke(app, ["stats", "hl", str(a), str(b), "--ci", "exact", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert round(data["estimate"], 3) == 0.305
    assert (round(data["ci_low"], 2), round(data["ci_high"], 2)) == (-0.15, 0.76)
    assert data["hodges_lehmann"]["n_missing1"] == 1
    assert round(data["p"], 4) == 0.2544
    text = runner.invoke(app, ["stats", "hl", str(a), str(b)])
    assert "floor (SAS)" in text.stdout
    assert "arm 1: n=10 (missing 1)" in text.stdout


def test_hl_csv_column_and_errors(tmp_path):
    a = tmp_path / "a.csv"
    b = tmp_path / "b.csv"
    a.write_text("id,change_pct\n1,-10\n2,-20\n3,\n4,-5\n")
    b.write_text("id,change_pct\n1,3\n2,-1\n3,4\n")
    res = runner.invoke(app, ["stats", "hl", str(a), str(b), "--column", "change_pct", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["hodges_lehmann"]["n1"] == 3
    assert data["arm1"]["n_missing"] == 1
    res = runner.invoke(app, ["stats", "hl", str(a), str(b), "--column", "nope"])
    assert res.exit_code == 1
    assert "no column 'nope'" in res.output
    bad = tmp_path / "bad.txt"
    bad.write_text("1.0\nabc\n")
    res = runner.invoke(app, ["stats", "hl", str(bad), str(b)])
    assert res.exit_code == 1
    assert "not a number" in res.output


def test_paper_shi2022_all_rows_match():
    res = runner.invoke(app, ["paper", "shi2022"])
    assert res.exit_code == 0, res.output
    assert "14/14 rows match" in res.stdout
    assert "minus sign" in res.stdout
    data = json.loads(runner.invoke(app, ["paper", "shi2022", "--json"]).stdout)
    assert data["n_mismatches"] == 0
    assert all(r["match"] for r in data["rows"])


def test_paper_unknown_exits_nonzero():
    res = runner.invoke(app, ["paper", "nope"])
    assert res.exit_code == 1
    assert "unknown paper" in res.output
