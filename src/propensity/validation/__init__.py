"""Data-quality gates on great-expectations: suites from the contracts, quarantine, critical stops.

* :mod:`.checks` - the rule vocabulary (one declaration per rule, reusable for any table);
* :mod:`.runner` - suites, validation definitions, checkpoints and Data Docs;
* :mod:`.gate` - raw partitions in, ``clean/`` and ``quarantine/`` partitions out;
* :mod:`.frames` - one-call validation of derived tables (features, scores).
"""

import logging

# great-expectations logs hundreds of INFO lines on import; keep task logs readable
for _name in ("great_expectations", "great_expectations._docs_decorators", "great_expectations.data_context"):
    logging.getLogger(_name).setLevel(logging.WARNING)

from propensity.validation.gate import Gate, PartitionOutcome, ValidationFailed, validate  # noqa: E402

__all__ = ["Gate", "PartitionOutcome", "ValidationFailed", "validate"]
