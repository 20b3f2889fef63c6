"""Data-quality gates on great-expectations: suites from the contracts, quarantine, critical stops.

* :mod:`.checks` - the rule vocabulary (one declaration per rule, reusable for any table);
* :mod:`.runner` - suites, validation definitions, checkpoints and Data Docs;
* :mod:`.gate` - raw partitions in, ``clean/`` and ``quarantine/`` partitions out;
* :mod:`.frames` - one-call validation of derived tables (features, scores), in Polars.

The gate's names are loaded on first use: importing the rule vocabulary (as every feature
and scoring module does) must not import great-expectations.
"""

import logging
from typing import Any

# great-expectations logs hundreds of INFO lines on import; keep task logs readable
for _name in ("great_expectations", "great_expectations._docs_decorators", "great_expectations.data_context"):
    logging.getLogger(_name).setLevel(logging.WARNING)

__all__ = ["Gate", "PartitionOutcome", "ValidationFailed", "validate"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from propensity.validation import gate

        return getattr(gate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
