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
