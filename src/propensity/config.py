"""One typed settings object for the whole system.

Every command, DAG and test builds its view of the world from :class:`Settings`:
environment variables prefixed ``PROPENSITY_`` win over an optional YAML file,
which wins over the embedded defaults. All state lives under ``home`` unless a
URI points elsewhere (PostgreSQL, ``s3://``), so that ``rm -rf var`` is a full reset
and a production deployment only swaps URIs.
"""

from __future__ import annotations

import difflib
import os
import types
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from propensity.errors import RequestError
from propensity.zones import BUCKETS

CONFIG_ENV = "PROPENSITY_CONFIG"
#: the project's conf/ (audience declarations, promotion calendar): the defaults of ``audiences.file``
#: and ``calendar.promotions``
PROJECT_CONF = Path(__file__).resolve().parents[2] / "conf"


class ConfigError(RequestError):
    """A configuration file (settings or audience YAML) that cannot be read as written: the
    message names the file and the key, so a typo never silently leaves a default in force."""


# --------------------------------------------------------------------------- unknown YAML keys


@dataclass(frozen=True)
class UnknownKey:
    """A key a YAML document has but the model at that place does not declare."""

    path: tuple[str | int, ...]  # from the document root to the key, list positions as ints
    known: tuple[str, ...]  # the keys allowed where it sits

    @property
    def key(self) -> str:
        return str(self.path[-1])

    def hint(self) -> str:
        """``did you mean 'x'?`` for a near miss, else the keys allowed at that level."""
        close = difflib.get_close_matches(self.key.lower(), self.known, n=1, cutoff=0.6)
        return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(self.known)}"


def dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in path)


def unknown_keys(
    model: type[BaseModel], data: Any, path: tuple[str | int, ...] = (), *, fold_case: bool = False
) -> Iterator[UnknownKey]:
    """Keys of ``data`` (a parsed YAML mapping) that ``model`` does not declare, at any depth.

    Why a walk instead of ``extra="forbid"`` on the models: the settings models are also
    filled from ``PROPENSITY_<MODEL>__<FIELD>`` environment variables, a namespace other
    tools share, and must keep ignoring what they do not know there; only what an operator
    wrote in a file is held to the declared keys. It follows the field annotations through
    nested models, ``X | None``, ``dict[str, Model]`` and ``list[Model]``. ``fold_case``
    matches keys case-insensitively, as pydantic-settings does for the top level.
    """
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    by_key = {name.lower(): name for name in fields} if fold_case else {name: name for name in fields}
    for key, value in data.items():
        name = by_key.get(str(key).lower() if fold_case else key)
        if name is None:
            yield UnknownKey((*path, key), tuple(fields))
        else:
            yield from _unknown_inside(fields[name].annotation, value, (*path, key))


def _unknown_inside(annotation: Any, value: Any, path: tuple[str | int, ...]) -> Iterator[UnknownKey]:
    """Descend into the models an annotation holds (directly, optionally, as dict values or list items)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield from unknown_keys(annotation, value, path)
        return
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        for arg in args:
            yield from _unknown_inside(arg, value, path)
    elif origin is dict and len(args) == 2 and isinstance(value, dict):
        for key, item in value.items():
            yield from _unknown_inside(args[1], item, (*path, key))
    elif origin is list and args and isinstance(value, list):
        for i, item in enumerate(value):
            yield from _unknown_inside(args[0], item, (*path, i))


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` through libyaml's C loader when PyYAML has it: the same documents and
    errors, about ten times faster (the feature catalogue took a quarter of a second in Python)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def read_yaml_mapping(path: Path | Traversable, what: str) -> dict[str, Any]:
    """Parse a YAML file that must hold a mapping (empty: ``{}``); every failure is one line naming the file."""
    try:
        doc = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML: {exc.problem or exc.context}{where}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: {what} must be a mapping of keys to values, not a {type(doc).__name__}")
    return doc


class StrictYamlSource(YamlConfigSettingsSource):
    """The settings YAML, refused when it has a key :class:`Settings` does not declare.

    Environment variables and keyword arguments are not checked (see :func:`unknown_keys`).
    """

    def __init__(self, settings_cls: type[BaseSettings], yaml_file: Path) -> None:
        self._model = settings_cls  # the base class reads the file before it stores settings_cls
        super().__init__(settings_cls, yaml_file=yaml_file)

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        doc = read_yaml_mapping(file_path, "settings")
        unknown = next(unknown_keys(self._model, doc, fold_case=True), None)
        if unknown is not None:
            raise ConfigError(f"{file_path}: unknown key {dotted(unknown.path)!r} ({unknown.hint()})")
        return doc


class DirtConfig(BaseModel):
    """How much deliberate dirt the simulator mixes into the sources, per type.

    Real shops send duplicated feeds, bots and broken codes; the validation gates must
    see them in the demo. Tests switch dirt off to get clean truth.
    """

    rate: float = Field(0.002, ge=0, le=0.2, description="fraction of rows touched, per enabled type")
    duplicate_events: bool = True
    null_ids: bool = True
    negative_prices: bool = True
    zero_quantities: bool = True
    future_timestamps: bool = True
    unknown_codes: bool = True
    orphan_order_items: bool = True
    bot_sessions: bool = True

    def enabled(self) -> list[str]:
        return [name for name, value in self.model_dump().items() if value is True]


class ShiftConfig(BaseModel):
    """An opt-in change of the simulated customers' behaviour from day ``day`` on (drift drills).

    Days before ``day`` are exactly what the same seed gives without a shift; from ``day``
    on price sensitivity and traffic (volume, device and source mix) change. The truth
    store keeps the original law: oracle probabilities ignore the shift.
    """

    day: int = Field(..., ge=0, description="first day (index from the simulation start) with the new behaviour")
    price_sensitivity: float = Field(
        1.0, ge=0, description="multiplier on every customer's price sensitivity (clipped to [0, 1])"
    )
    sessions: float = Field(1.0, ge=0, description="multiplier on the daily session probability (traffic volume)")
    device_mix: dict[str, float] | None = Field(
        None, description="device weights of every session from the shift on, e.g. {app: 0.6, mobile: 0.4}"
    )
    traffic_mix: dict[str, float] | None = Field(
        None, description="traffic source weights of organic sessions from the shift on, e.g. {social: 1.0}"
    )


class SimulationConfig(BaseModel):
    """Defaults for ``propensity simulate``; the command line overrides each."""

    customers: int = 20_000
    # two years: a full year of training windows before the test, so every season (and
    # Black Friday) is in the training data; one year leaves the model blind to the season
    # of the label window it is calibrated on
    days: int = 730
    start: str = "2024-01-01"
    seed: int = 7
    products: int = 1_500
    dirt: DirtConfig = Field(default_factory=DirtConfig)
    shift: ShiftConfig | None = Field(None, description="opt-in behaviour shift (drift drills); off by default")


class VolumeConfig(BaseModel):
    """Row-count band around the trailing median of a table's recent partitions.

    The band is ``[m * min_ratio - z * sqrt(m), max(m * max_ratio, 2 * top) + z * sqrt(top) + 10]``
    for the median ``m`` and maximum ``top`` (robust to an initial full load, an outage, a ramp-up).
    A zero median (a closed shop, a feed that never had rows) gives no band: nothing to compare to.
    proportional for busy tables (a 90% drop in clickstream is caught), Poisson-tolerant
    for quiet ones (a closed Saturday in a small shop is not an alarm).
    """

    tables: list[str] = Field(
        default_factory=lambda: ["events", "orders", "reviews", "deliveries", "campaign_contacts", "fx_rates"],
        description="tables whose daily volume is checked: order lines follow their orders, and dimension "
        "tables (customers, products) change in bursts",
    )
    history: int = Field(7, ge=1, description="trailing partitions that form the baseline")
    min_history: int = Field(
        7,
        ge=1,
        description="no volume check until this many exist: a new shop's first week ramps up (deliveries trail "
        "orders by days), and at 400k customers a band from three days of ramp flagged the fourth (157 delivery "
        "rows against at most 127)",
    )
    min_ratio: float = 0.2
    max_ratio: float = 10.0
    z: float = 3.0


class ValidationConfig(BaseModel):
    """Data-quality gate settings. Severities: ``critical`` stops publication, ``row`` quarantines.

    ``severity`` overrides the default per rule (``"range"``) or per table and rule
    (``"orders.range"``). A key rule (``escalate_rules``) that fails more than
    ``escalate_share`` of a partition's rows is escalated to critical: at that point the
    keys are broken, not dirty.
    """

    volume: VolumeConfig = Field(default_factory=VolumeConfig)
    bot_events_per_minute: float = 60.0
    bot_min_events: int = 30
    freshness_hours: dict[str, float] = Field(default_factory=lambda: {"events": 12.0})
    escalate_share: float = Field(0.5, gt=0, le=1)
    escalate_rules: list[str] = Field(default_factory=lambda: ["unique_key", "not_null", "foreign_key"])
    severity: dict[str, str] = Field(default_factory=dict)
    docs: bool = Field(True, description="build a great-expectations Data Docs site under <home>/gx")


class TaskConfig(BaseModel):
    """One propensity task: who is eligible at snapshot T, and what the label is over [T, T+H).

    Population rules are windows before T: a customer must have at least one session in
    the last ``session_days`` (if set), at least one purchase in the last
    ``purchase_days`` (if set), no purchase in the last ``no_purchase_days`` (if set),
    and any activity in the last ``active_days`` (if set). ``label`` is ``purchase`` (a
    non-cancelled order in the horizon), ``inactive`` (no order and no session in it) or
    ``revenue`` (the net revenue of the paid orders in it, in the base currency: a
    customer-value task, fitted by regression, judged by Gini; see :mod:`propensity.models.clv`).
    """

    horizon_days: int = Field(..., ge=1)
    label: str = Field(..., pattern="^(purchase|inactive|revenue)$")
    session_days: int | None = None
    purchase_days: int | None = None
    no_purchase_days: int | None = None
    active_days: int | None = None
    test_snapshots: int = Field(
        1,
        ge=1,
        description="the latest fully labelled snapshots pooled into the out-of-time test set, "
        "features.snapshot_every_days apart (fewer when the history is short): enough for about "
        "500 positives keeps the AUC's interval near +-0.02",
    )
    valid_snapshots: int = Field(
        4,
        ge=1,
        description="the snapshots before the test pooled into the out-of-time validation set (early "
        "stopping, calibration), features.snapshot_every_days apart (fewer when the history is short): "
        "one conversion snapshot holds 50-80 positives, too few to stop boosting or fit a calibrator on",
    )
    description: str = ""

    @property
    def is_value(self) -> bool:
        """A customer-value task (``label: revenue``): a regression, not a probability."""
        return self.label == "revenue"


def default_tasks() -> dict[str, TaskConfig]:
    return {
        "conversion": TaskConfig(
            horizon_days=14,
            label="purchase",
            session_days=30,
            no_purchase_days=90,
            test_snapshots=4,  # 70 (June) to 460 (December) positives a snapshot on the demo shop
            description="visitors with a session in the last 30 days and no purchase in the last 90 "
            "(never-buyers included): do they purchase in the next 14 days?",
        ),
        "repurchase": TaskConfig(
            horizon_days=30,
            label="purchase",
            purchase_days=365,
            test_snapshots=2,  # about 750 positives a snapshot on the demo shop
            description="customers who bought in the last 365 days: do they buy again in the next 30 days?",
        ),
        "churn": TaskConfig(
            horizon_days=60,
            label="inactive",
            active_days=90,
            # one snapshot holds 2,400 positives, but its 5,300 rows alone give a perfectly calibrated
            # model an ECE of 0.015 on average (0.021 at the 95th percentile): three bring that to 0.009
            test_snapshots=3,
            description="customers active (purchase or session) in the last 90 days: "
            "no purchase and no session in the next 60 days?",
        ),
        # customer value over half a year, not a year: with out-of-time validation a horizon H needs
        # min_history_days + 3H days of history (train, validation and test label windows never
        # overlap), and the demo shop's two years hold H = 180 but not 365; a shop with 3.2 years
        # of orders sets `tasks: {clv: {horizon_days: 365}}`
        "clv": TaskConfig(
            horizon_days=180,
            label="revenue",
            active_days=365,
            test_snapshots=2,
            description="customers active (purchase or session) in the last 365 days: their net revenue "
            "in the next 180 days, in the base currency",
        ),
    }


class FeatureConfig(BaseModel):
    """Snapshot and training-set settings."""

    snapshot_every_days: int = Field(14, ge=1)
    training_span_days: int = Field(
        365,
        ge=0,
        description="how far back training snapshots reach (from the latest one); a year covers every season",
    )
    min_history_days: int = Field(60, ge=0, description="first snapshot at least this long after data start")
    holdout: str = Field(
        "oot",
        pattern="^(oot|customers)$",
        description="oot: a validation snapshot one horizon before the test; customers: 20% of customers "
        "held out of the training snapshots (more recent training data for short histories)",
    )
    shards: int = Field(
        1, ge=1, le=BUCKETS, description="customer hash shards for feature building (one mapped Airflow task each)"
    )
    allow_gaps: bool = Field(
        False,
        description="build snapshots over days with no clean partition (a shop really closed); "
        "by default a missing day is an error, since a snapshot without it misses those customers",
    )


class CalendarConfig(BaseModel):
    """The promotion calendar: sales planned in advance (see :mod:`propensity.calendar`)."""

    enabled: bool = Field(True, description="false: no promotions are known (calendar features stay empty)")
    promotions: Path | None = Field(None, description="calendar YAML; default: conf/promotions.yaml of the project")


class ModelConfig(BaseModel):
    """LightGBM training, calibration, tuning and the champion gate."""

    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 100
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    max_rounds: int = 2000
    early_stopping_rounds: int = 100
    seed: int = 7
    threads: int = 2
    calibration: str = Field(
        "platt",
        pattern="^(auto|isotonic|platt)$",
        description="platt (a sigmoid of the raw score's logit), isotonic (steps), or auto (isotonic "
        "from 200 positives and 200 negatives on, else platt). Platt is the default: a strictly "
        "monotone map keeps the booster's ranking, where isotonic steps tie scores (test AUC -0.002 "
        "on conversion), and on three simulated shops its pooled ECE was lower in 12 of 15 "
        "repurchase comparisons and below 0.02 on every task and seed (isotonic: 0.0201 on one)",
    )
    max_train_rows: int | None = Field(
        None,
        ge=1000,
        description="cap on a task's training rows: each training snapshot gets an equal share and is sampled as it "
        "is loaded (negatives above the share, and positives too when they are half the share or more, each class "
        "to half), each row weighted by the inverse of its sampling rate, so the booster's time and the trainer's "
        "memory follow the cap, not the shop; validation, calibration and test rows are sampled only by "
        "models.max_eval_rows (None: no cap)",
    )
    max_eval_rows: int | None = Field(
        None,
        ge=1000,
        description="cap on a task's validation rows and, separately, on its test rows: each of the split's snapshots "
        "gets an equal share and keeps a uniform sample of its customers (a hash of the id, so the same customers in "
        "every snapshot and task), unweighted, so AUC and calibration are estimated without bias and the trainer's "
        "memory follows the cap at a million customers; the intervals widen accordingly (None: no cap)",
    )
    tuning_trials: int = Field(0, ge=0, description="Optuna trials; 0 disables tuning")
    tuning_seconds: float = 300.0
    margin: float = Field(0.005, ge=0, description="a challenger may be this much worse (AUC) than the champion")
    bootstrap: int = Field(
        1000,
        ge=100,
        description="customer-cluster bootstrap replicates behind the 95% intervals of the test metrics",
    )
    value_oracle_paths: int = Field(
        0,
        ge=0,
        description="on simulated data, Monte Carlo paths per customer of a value task's ceiling (oracle_gini); 0 "
        "skips it: 64 paths cost about 30 s per test snapshot of the demo shop (bench/clv.py sets it)",
    )
    floors: dict[str, float] = Field(
        default_factory=lambda: {"conversion": 0.6, "repurchase": 0.6, "churn": 0.6},
        description="minimum OOT test AUC per task for promotion",
    )
    experiment: str = "propensity"
    retrain_weekday: int = Field(
        0,
        ge=0,
        le=6,
        description="train_models retrains every task on snapshots falling on this weekday (0 = Monday); "
        "on other days only tasks without a champion (drift retrains the breached tasks any day)",
    )


class ScoringConfig(BaseModel):
    """Batch scoring from the champion models."""

    batch_rows: int = Field(200_000, ge=1, description="rows per scoring batch: bounds the memory of one batch")
    reason_codes: int = Field(3, ge=0, le=10, description="top positive SHAP contributions kept per audience member")
    shards: int = Field(1, ge=1, le=BUCKETS, description="customer hash shards (one mapped Airflow task each)")
    max_staleness_days: int = Field(
        2,
        ge=1,
        description="scoring and audiences refuse a snapshot more than this many days after the last observed day",
    )


class AudiencesConfig(BaseModel):
    """Audience building, suppression and exports; the audiences themselves are declared in YAML."""

    file: Path | None = Field(None, description="audience declarations; default: conf/audiences.yaml of the project")
    export: str | None = Field(None, description="export location: a folder or s3://bucket/prefix")
    salt: str | None = Field(
        None, description="salt of the pseudonymous export ids (set PROPENSITY_AUDIENCES__SALT); never in code"
    )
    control_fraction: float = Field(0.10, ge=0, lt=1, description="default holdout share per audience")
    frequency_cap: int = Field(2, ge=1, description="at most this many contacts per customer ...")
    frequency_days: int = Field(7, ge=1, description="... in this many days, across campaigns")
    composition_max_ratio: float = Field(
        1.5, gt=1, description="warn when a group's share in an audience differs from the base by more than this"
    )
    composition_min_share: float = Field(0.02, ge=0, description="groups smaller than this in the base are ignored")
    crm_db: str | None = Field(
        None, description="SQLAlchemy URL for the audience_members table; default: the shop DB when PostgreSQL"
    )


class MonitoringConfig(BaseModel):
    """Drift monitoring: population stability (PSI) of each champion's features and scores.

    A task breaches when at least ``min_drifted_features`` features have a PSI of
    ``psi_threshold`` or more, or its score PSI reaches ``score_psi_threshold``.
    """

    psi_threshold: float = Field(0.2, gt=0, description="PSI from which a feature counts as drifted")
    min_drifted_features: int = Field(3, ge=1, description="drifted features that make a breach")
    score_psi_threshold: float = Field(0.2, gt=0, description="score PSI that alone makes a breach")
    bins: int = Field(10, ge=2, le=100, description="quantile bins of a numeric feature's reference")
    max_categories: int = Field(20, ge=1, description="categories kept per categorical feature; the rest pool")
    exclude: list[str] = Field(
        default_factory=lambda: ["signup_tenure_days", "tenure_days", "orders_total", "revenue_total"],
        description="features not monitored: by default the ages and lifetime totals, which grow with the "
        "customer base's age by construction (a growing shop drifts on them every month)",
    )


class UpliftConfig(BaseModel):
    """Uplift models per campaign kind (an offer code), learnt from past campaigns' treatment
    and control members (:mod:`propensity.models.uplift_train`)."""

    window_days: int = Field(14, ge=1, description="response window after a send in which a purchase counts")
    test_campaigns: int = Field(
        2, ge=1, description="the latest campaign dates with a complete window form the out-of-time test"
    )
    learners: list[Literal["t", "x", "dr"]] = Field(
        default_factory=lambda: ["t", "x"],
        min_length=1,
        description="meta-learners tried (two-model, X, doubly robust with the design's known propensities); "
        "validation Qini picks. dr is not tried by default: pooling a ranked audience's members (90% treated) with "
        "an exploration slice (50%), its 1/0.1 weights on the ranked controls cost more variance than they remove "
        "bias (correlation with the true effect 0.58 against the X-learner's 0.79, tests/test_uplift.py)",
    )
    rounds: list[int] = Field(
        default_factory=lambda: [100, 200, 400], min_length=1, description="boosting rounds tried per component"
    )
    learning_rate: float = Field(0.03, gt=0)
    num_leaves: int = Field(
        7,
        ge=2,
        description="small trees: an effect is a difference of two noisy outcome models, and on 9k-30k members "
        "of simulated campaigns 7 leaves with 200 per leaf tracked the true effect better than the propensity "
        "models' 31 leaves (correlation 0.12-0.15 against 0.09-0.12)",
    )
    min_child_samples: int = Field(200, ge=1)
    subsample: float = Field(0.8, gt=0, le=1)
    colsample_bytree: float = Field(0.5, gt=0, le=1)
    min_members: int = Field(2000, ge=10, description="fewer training members than this is an error, not a model")
    margin: float = Field(
        0.0, ge=0, description="a challenger may be this much worse (Qini coefficient) than the champion"
    )
    refit_on_test: bool = Field(
        False,
        description="serve the chosen learner refitted on the training and the test members (the test's campaigns are "
        "the latest). Off by default: the logged figures stay the fit's without them, and a champion refitted on "
        "a test scores it in-sample, so the Qini gate would keep it against any challenger until newer campaigns",
    )
    bags: int = Field(
        5,
        ge=1,
        description="the served effect is the mean of this many fits on bootstrap resamples of the members: one "
        "fit's ranking of a small effect moves with the draw",
    )


class RecommendationsConfig(BaseModel):
    """Per-customer product recommendations (:mod:`propensity.models.recommend`), trained with
    the propensity tasks (``propensity train``) and registered as ``propensity-recommendations``."""

    enabled: bool = True
    horizon_days: int = Field(
        60, ge=1, description="the evaluation window: products first bought in the H days after the test date"
    )
    view_days: int = Field(
        365,
        ge=0,
        description="days of product views a customer's history includes: a taste for categories is stable, and "
        "a year of views rather than 30 days raised recall@10 on the demo shop from 0.095 to 0.120 (popularity: 0.079)",
    )
    blends: list[float] = Field(
        default_factory=lambda: [0.0, 0.5, 2.0, 8.0, 100.0],
        min_length=1,
        description="weights of category affinity against item-item similarity tried; validation recall@10 "
        "picks (item-item wins on Online Retail's co-purchases, category affinity on the simulator's "
        "category-driven choices)",
    )
    view_weights: list[float] = Field(
        default_factory=lambda: [0.3, 1.0], min_length=1, description="weights of a view against a purchase tried"
    )
    valid_windows: int = Field(
        2, ge=1, description="H-day windows before the test date pooled to choose the weights (fewer when short)"
    )
    products: int = Field(3, ge=1, le=10, description="product columns an offer: recommended export row carries")
    margin: float = Field(0.0, ge=0, description="a challenger may be this much worse (recall@10) than the champion")


class PersonasConfig(BaseModel):
    """Behavioural personas (:mod:`propensity.models.personas`): k-means on a snapshot's traits."""

    enabled: bool = True
    k_min: int = Field(3, ge=2)
    k_max: int = Field(8, ge=2, description="k is chosen by silhouette within [k_min, k_max]")
    max_rows: int = Field(50_000, ge=1000, description="customers the clustering is fitted on (a uniform sample)")


class Settings(BaseSettings):
    """Where everything lives and how the pipeline behaves.

    URIs left empty are derived from ``home`` (see the ``*_uri`` properties), so a
    single ``PROPENSITY_HOME`` moves the whole installation.
    """

    model_config = SettingsConfigDict(
        env_prefix="PROPENSITY_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    home: Path = Path("./var")
    lake: str | None = Field(None, description="lake root: file:///path or s3://bucket/prefix")
    shop_db: str | None = Field(None, description="SQLAlchemy URL of the shop's OLTP database")
    landing: str | None = Field(None, description="clickstream landing area: a folder or s3://bucket/prefix")
    drops: str | None = Field(None, description="CSV drop area (fx rates): a folder or s3://bucket/prefix")
    mlflow_tracking_uri: str | None = None
    mlflow_artifacts: str | None = None
    airflow_home: Path | None = None
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    base_currency: str = "EUR"
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    tasks: dict[str, TaskConfig] = Field(default_factory=default_tasks)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    calendar: CalendarConfig = Field(default_factory=CalendarConfig)
    models: ModelConfig = Field(default_factory=ModelConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    audiences: AudiencesConfig = Field(default_factory=AudiencesConfig)
    uplift: UpliftConfig = Field(default_factory=UpliftConfig)
    recommendations: RecommendationsConfig = Field(default_factory=RecommendationsConfig)
    personas: PersonasConfig = Field(default_factory=PersonasConfig)

    @field_validator("tasks", mode="before")
    @classmethod
    def _merge_tasks(cls, value: Any) -> Any:
        """``tasks: {repurchase: {horizon_days: 90}}`` overrides one field; ``{conversion: null}`` drops a task."""
        if not isinstance(value, dict):
            return value
        merged: dict[str, Any] = {k: v.model_dump() for k, v in default_tasks().items()}
        for name, spec in value.items():
            if spec is None:
                merged.pop(name, None)
            elif isinstance(spec, TaskConfig):
                merged[name] = spec.model_dump()
            else:
                merged[name] = {**merged.get(name, {}), **spec}
        return merged

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_ENV)
        if config_file:
            sources.append(StrictYamlSource(settings_cls, yaml_file=Path(config_file)))
        return tuple(sources)

    # Derived locations -------------------------------------------------------------

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def lake_uri(self) -> str:
        return self.lake or f"file://{self.home_dir / 'lake'}"

    @property
    def shop_db_url(self) -> str:
        return self.shop_db or f"sqlite:///{self.home_dir / 'shop.db'}"

    @property
    def landing_uri(self) -> str:
        return self.landing or str(self.home_dir / "landing")

    @property
    def drops_uri(self) -> str:
        return self.drops or str(self.home_dir / "drops")

    @property
    def truth_dir(self) -> Path:
        """The simulator's oracle store. Only the simulator and evaluation code read it."""
        return self.home_dir / "truth"

    @property
    def gx_dir(self) -> Path:
        """great-expectations project (suites, results, Data Docs)."""
        return self.home_dir / "gx"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home_dir / 'mlflow.db'}"

    @property
    def artifacts_uri(self) -> str:
        return self.mlflow_artifacts or str(self.home_dir / "mlartifacts")

    @property
    def audiences_file(self) -> Path:
        if self.audiences.file is not None:
            return self.audiences.file.expanduser().resolve()
        return PROJECT_CONF / "audiences.yaml"

    @property
    def promotions_file(self) -> Path | None:
        """The promotion calendar in force, or None when the calendar is disabled."""
        if not self.calendar.enabled:
            return None
        if self.calendar.promotions is not None:
            return self.calendar.promotions.expanduser().resolve()
        return PROJECT_CONF / "promotions.yaml"

    @property
    def export_uri(self) -> str:
        return self.audiences.export or str(self.home_dir / "exports")

    @property
    def crm_db_url(self) -> str | None:
        """Where ``audience_members`` goes: explicit, or the shop DB when it is PostgreSQL."""
        if self.audiences.crm_db:
            return self.audiences.crm_db
        return self.shop_db_url if self.shop_db_url.startswith("postgresql") else None

    @property
    def airflow_home_dir(self) -> Path:
        return (self.airflow_home or self.home_dir / "airflow").expanduser().resolve()


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings, reading ``config_file`` (or ``$PROPENSITY_CONFIG``) as YAML.

    The file is exported through ``PROPENSITY_CONFIG`` so that child processes (Airflow
    tasks, MLflow servers started by us) see the same configuration.
    """
    if config_file is not None:
        path = Path(config_file).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"configuration file not found: {path}")
        os.environ[CONFIG_ENV] = str(path)
    return Settings(**overrides)
