"""Data-quality gates on great-expectations: suites from the contracts, quarantine, critical stops.

* :mod:`.checks` - the rule vocabulary (one declaration per rule, reusable for any table);
* :mod:`.runner` - suites, validation definitions, checkpoints and Data Docs;
* :mod:`.gate` - raw partitions in, ``clean/`` and ``quarantine/`` partitions out;
* :mod:`.frames` - one-call validation of derived tables (features, scores).
"""

from propensity.validation.gate import Gate, PartitionOutcome, ValidationFailed, validate

__all__ = ["Gate", "PartitionOutcome", "ValidationFailed", "validate"]
