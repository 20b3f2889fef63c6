"""Progress: a bar on a terminal, one log line per step in Airflow and redirected output."""

from __future__ import annotations

import logging

from propensity import progress


def test_redirected_output_logs_one_line_per_step_with_counts_and_eta(caplog, monkeypatch):
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "build_features")  # inside an Airflow task: never a bar
    with caplog.at_level(logging.INFO, logger="propensity.progress"):
        assert list(progress.track(["2025-01-01", "2025-01-02", "2025-01-03"], "features")) == [
            "2025-01-01",
            "2025-01-02",
            "2025-01-03",
        ]
    lines = [r.getMessage() for r in caplog.records if r.name == "propensity.progress"]
    assert [ln.split(" (")[0] for ln in lines] == [
        "features 1/3 2025-01-01",
        "features 2/3 2025-01-02",
        "features 3/3 2025-01-03",
    ]
    assert all("ETA" in ln for ln in lines)


def test_a_terminal_gets_a_bar_and_no_log_lines(caplog, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CTX_DAG_ID", raising=False)
    monkeypatch.setattr(progress, "interactive", lambda: True)
    with caplog.at_level(logging.INFO, logger="propensity.progress"):
        assert list(progress.track(range(4), "collect")) == [0, 1, 2, 3]
    assert not [r for r in caplog.records if r.name == "propensity.progress"]


def test_run_ends_each_stage_with_its_wall_time(tmp_path, monkeypatch, capsys):
    """``propensity run`` says where its minutes go: a ``[stage: N s]`` line after each stage."""
    from conftest import make_shop

    from propensity import cli

    shop = make_shop(tmp_path, customers=60, days=3)
    monkeypatch.delenv("PROPENSITY_CONFIG", raising=False)
    monkeypatch.setenv("PROPENSITY_HOME", str(shop.home_dir))
    monkeypatch.setenv("PROPENSITY_VALIDATION__DOCS", "false")
    day = "2025-01-01"  # SMALL_SHOP start
    assert cli.main(["run", "--start", day, "--end", day, "--through", "validate"]) == 0
    stages = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[")]
    assert [ln.split(":")[0] for ln in stages] == ["[collect", "[validate"], stages
    assert all(ln.endswith(" s]") and float(ln.split(": ")[1][:-3]) >= 0 for ln in stages), stages
