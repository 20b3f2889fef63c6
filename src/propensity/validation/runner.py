"""Running checks through great-expectations: suites, validation definitions, checkpoints, Data Docs.

One :class:`GXRunner` wraps a GX context. With a ``root`` it is a file context under
``<home>/gx`` whose checkpoints update a Data Docs site after each run (the place users
already look); without, an ephemeral context for library use and tests. GX's progress
bars and chatty loggers are silenced so that task logs stay readable.
"""

from __future__ import annotations

import copy
import fcntl
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from propensity.validation.checks import Check

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
for _name in ("great_expectations", "great_expectations.core", "great_expectations.data_context"):
    logging.getLogger(_name).setLevel(logging.ERROR)


@dataclass
class CheckResult:
    check: Check
    success: bool
    unexpected_count: int = 0
    unexpected_index: list[int] = field(default_factory=list)
    observed: Any = None
    sample: list[Any] = field(default_factory=list)


@dataclass
class SuiteResult:
    name: str
    success: bool
    results: list[CheckResult]
    statistics: dict[str, Any]

    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.success]


@contextmanager
def _project_lock(root: Path | None) -> Iterator[None]:
    """Serialise access to a file-backed GX project: parallel tasks would corrupt its YAML and stores."""
    if root is None:
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".propensity.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class GXRunner:
    def __init__(self, root: Path | None = None) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx = gx
        self.root = root
        with _project_lock(root):
            if root is not None:
                self.context = gx.get_context(mode="file", project_root_dir=str(root))
            else:
                self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        self.with_docs = root is not None
        #: what :meth:`build_docs` renders: every result and suite validated since the last build
        self.pending_docs: list[Any] = []
        self.datasource = self.context.data_sources.add_or_update_pandas("propensity")

    def _batch_definition(self, name: str) -> Any:
        try:
            asset = self.datasource.get_asset(name)
        except LookupError:
            asset = self.datasource.add_dataframe_asset(name)
        try:
            return asset.get_batch_definition("whole")
        except (LookupError, KeyError):
            return asset.add_batch_definition_whole_dataframe("whole")

    def run(self, name: str, df: pd.DataFrame, checks: Sequence[Check]) -> SuiteResult:
        """Validate ``df`` (RangeIndex) against ``checks`` through a Checkpoint."""
        with _project_lock(self.root):
            return self._run(name, df, checks)

    def _run(self, name: str, df: pd.DataFrame, checks: Sequence[Check]) -> SuiteResult:
        gx = self.gx
        from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

        expectations = []
        for i, c in enumerate(checks):
            e = copy.deepcopy(c.gx())
            e.id = None
            e.meta = {**c.meta(), "check_index": i}
            expectations.append(e)
        suite = self.context.suites.add_or_update(gx.ExpectationSuite(name=name, expectations=expectations))
        vd = self.context.validation_definitions.add_or_update(
            gx.ValidationDefinition(data=self._batch_definition(name), suite=suite, name=name)
        )
        # no UpdateDataDocsAction: it rebuilt the site's index after each of a gate run's 18
        # checkpoints (a quarter of validating a shop); :meth:`build_docs` renders them once
        cp = self.context.checkpoints.add_or_update(
            gx.Checkpoint(
                name=name,
                validation_definitions=[vd],
                actions=[],
                result_format={"result_format": "COMPLETE", "partial_unexpected_count": 5},
            )
        )
        result = cp.run(batch_parameters={"dataframe": df})
        result_id, vr = next(iter(result.run_results.items()))
        if self.with_docs:
            self.pending_docs += [result_id, ExpectationSuiteIdentifier(name=name)]
        out = []
        for r in vr.results:
            check = checks[int(r.expectation_config.meta["check_index"])]
            res = r.result or {}
            idx = res.get("unexpected_index_list") or []
            # pandas returns plain indices; some expectations return dicts of {column: value, index}
            idx = [i if isinstance(i, int) else int(i.get("index", -1)) if isinstance(i, dict) else int(i) for i in idx]
            out.append(
                CheckResult(
                    check=check,
                    success=bool(r.success),
                    unexpected_count=int(res.get("unexpected_count") or 0),
                    unexpected_index=idx,
                    observed=res.get("observed_value"),
                    sample=list(res.get("partial_unexpected_list") or [])[:5],
                )
            )
        return SuiteResult(
            name=name,
            success=bool(vr.success),
            results=out,
            statistics=dict(vr.statistics or {}),
        )

    def build_docs(self) -> None:
        """Render the results and suites validated since the last call, and the site's index, once."""
        if not self.with_docs or not self.pending_docs:
            return
        with _project_lock(self.root):
            self.context.build_data_docs(resource_identifiers=self.pending_docs, build_index=True)
        self.pending_docs = []

    def docs_url(self) -> str | None:
        """The Data Docs site's index (a ``file://`` URL for a file project); None without Data Docs."""
        if not self.with_docs:
            return None
        urls = self.context.get_docs_sites_urls()
        return urls[0]["site_url"] if urls else None
