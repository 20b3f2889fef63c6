"""Strict inputs (issue #13, found by fault injection): nothing malformed is imported or configured silently.

Each test drives a real component (a CSV or Parquet file in ``tmp_path``, the SQLite shop
DB, the settings and audience YAML files) with the hostile or careless input that used to
be accepted or to crash with a traceback, and checks the one-line error that replaces it:
it names the file, and the row, line or key where one is known.
"""

from __future__ import annotations

import gzip
import zipfile
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import yaml

from propensity import cli
from propensity.audiences.spec import MAX_NAME_LENGTH, load_audiences
from propensity.config import CONFIG_ENV, PROJECT_CONF, ConfigError, Settings, load_settings
from propensity.errors import DataQualityError, RequestError
from propensity.importers import ImportDataError, import_online_retail, import_orders
from propensity.sources.landing import fx_key, read_fx
from propensity.sources.oltp import ShopDB
from propensity.storage import open_store

HEADER = "customer_id,order_id,order_time,amount\n"
GOOD_ROW = "c1,o1,2024-03-01 10:00:00,5.00\n"
RETAIL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
RETAIL_ROW = "536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850,United Kingdom\n"
TASKS = ["conversion", "repurchase", "churn"]


@pytest.fixture
def db(tmp_path: Path) -> ShopDB:
    """A real SQLite shop DB holding one order, so a rejected import can be seen to change nothing."""
    shop = ShopDB(f"sqlite:///{tmp_path / 'shop.db'}")
    shop.create_schema()
    seed = tmp_path / "seed.csv"
    seed.write_text(HEADER + GOOD_ROW)
    import_orders(seed, shop)
    yield shop
    shop.dispose()


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    data = text.encode(encoding)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def _unchanged(db: ShopDB) -> None:
    assert db.extract("orders").to_pandas().gross_amount.tolist() == [5.0]


# --------------------------------------------------------------------------- importer: extra fields


@pytest.mark.parametrize(
    ("rows", "row", "line"),
    [
        pytest.param(["c1,o1,2024-03-01 10:00:00,12,50\n"], 1, 2, id="decimal-comma"),
        pytest.param([GOOD_ROW, "c1,o2,2024-03-01 10:00:00,1,234.56\n"], 2, 3, id="thousands-separator"),
        pytest.param([GOOD_ROW, "\n", "c2,o3,2024-03-02 10:00:00,3,5\n"], 2, 4, id="after-a-blank-line"),
    ],
)
def test_orders_row_with_extra_fields_is_rejected(tmp_path: Path, db: ShopDB, rows: list, row: int, line: int) -> None:
    """``12,50`` imported as 12.0 and ``1,234.56`` as 1.0 with rc 0: pandas took the extra
    field for an index column or dropped it."""
    path = _write(tmp_path / "export.csv", HEADER + "".join(rows))
    with pytest.raises(ImportDataError) as exc:
        import_orders(path, db)
    message = _one_line(exc)
    assert message.startswith(f"{path}: data row {row} (line {line}) has 5 fields but the header has 4")
    _unchanged(db)


def test_orders_extra_fields_in_gzip_and_tsv(tmp_path: Path, db: ShopDB) -> None:
    gz = _write(tmp_path / "export.csv.gz", HEADER + GOOD_ROW + "c1,o2,2024-03-01 10:00:00,12,50\n")
    with pytest.raises(ImportDataError, match=r"export\.csv\.gz: data row 2 \(line 3\) has 5 fields"):
        import_orders(gz, db)
    tsv = _write(tmp_path / "export.tsv", (HEADER + GOOD_ROW).replace(",", "\t") + "c1\to2\t2024-03-01\t1\t5\n")
    with pytest.raises(ImportDataError, match=r"export\.tsv: data row 2 \(line 3\) has 5 fields"):
        import_orders(tsv, db)
    _unchanged(db)


def test_orders_zipped_csv_is_checked_too(tmp_path: Path, db: ShopDB) -> None:
    path = tmp_path / "export.csv.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("export.csv", HEADER + GOOD_ROW + "c2,o2,2024-03-02 10:00:00,7.5\n")
    assert import_orders(path, db).orders == 2
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("export.csv", HEADER + "c1,o1,2024-03-01 10:00:00,12,50\n")
    with pytest.raises(ImportDataError, match=r"export\.csv\.zip: data row 1 \(line 2\) has 5 fields"):
        import_orders(path, db)


def test_quoted_decimal_comma_is_one_field(tmp_path: Path, db: ShopDB) -> None:
    """A quoted ``"12,50"`` is one field: the row count check does not reject it (the number
    parser then names the value it cannot read)."""
    path = _write(tmp_path / "export.csv", HEADER + 'c1,o1,2024-03-01 10:00:00,"12,50"\n')
    with pytest.raises(ImportDataError, match=r"data row 1 \(1-based, header excluded\)") as exc:
        import_orders(path, db)
    assert "'12,50' is not a number" in _one_line(exc)


def test_online_retail_row_with_extra_fields_is_rejected(tmp_path: Path, db: ShopDB) -> None:
    bad = RETAIL_ROW.replace(",2.55,", ",2,55,")
    path = _write(tmp_path / "online_retail.csv.gz", RETAIL_HEADER + RETAIL_ROW + bad)
    with pytest.raises(ImportDataError) as exc:
        import_online_retail(path, db)
    assert _one_line(exc).startswith(f"{path}: data row 2 (line 3) has 9 fields but the header has 8")
    _unchanged(db)


# --------------------------------------------------------------------------- importer: no data rows


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_orders_header_only_file(tmp_path: Path, db: ShopDB, suffix: str) -> None:
    """Crashed with ``TypeError: Cannot cast DatetimeArray to dtype float64``."""
    path = _write(tmp_path / f"export{suffix}", HEADER)
    with pytest.raises(ImportDataError) as exc:
        import_orders(path, db)
    assert _one_line(exc) == f"{path}: has a header but no data rows"
    _unchanged(db)


def test_online_retail_header_only_file(tmp_path: Path, db: ShopDB) -> None:
    path = _write(tmp_path / "online_retail.csv", RETAIL_HEADER)
    with pytest.raises(ImportDataError) as exc:
        import_online_retail(path, db)
    assert _one_line(exc) == f"{path}: has a header but no data rows"
    _unchanged(db)


def test_orders_empty_parquet(tmp_path: Path, db: ShopDB) -> None:
    path = tmp_path / "export.parquet"
    pd.DataFrame({c: pd.Series(dtype="str") for c in HEADER.strip().split(",")}).to_parquet(path)
    with pytest.raises(ImportDataError) as exc:
        import_orders(path, db)
    assert _one_line(exc) == f"{path}: has a header but no data rows"
    _unchanged(db)


def test_orders_without_any_customer_id(tmp_path: Path, db: ShopDB) -> None:
    """Every row is a guest checkout: nothing is left to import, which is a verdict, not a crash."""
    path = _write(tmp_path / "export.csv", HEADER + ",o1,2024-03-01 10:00:00,5.00\n,o2,2024-03-02 10:00:00,6\n")
    with pytest.raises(ImportDataError) as exc:
        import_orders(path, db)
    assert _one_line(exc) == f"{path}: none of the 2 data rows has a customer id (column 'customer_id')"
    _unchanged(db)


# --------------------------------------------------------------------------- importer: not UTF-8


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_orders_non_utf8_names_the_line(tmp_path: Path, db: ShopDB, suffix: str) -> None:
    """Said ``'utf-8' codec can't decode byte 0xe9 in position 1`` (a position in a buffer, no row)."""
    path = _write(tmp_path / f"export{suffix}", HEADER + GOOD_ROW * 3 + "Zoë,o9,2024-03-01 10:00:00,5\n", "latin-1")
    with pytest.raises(ImportDataError) as exc:
        import_orders(path, db)
    assert _one_line(exc) == (
        f"{path}: line 5 (data row 4) is not UTF-8: byte 0xeb at character 3; save the file as UTF-8"
    )
    _unchanged(db)


def test_online_retail_non_utf8_names_the_line(tmp_path: Path, db: ShopDB) -> None:
    path = _write(tmp_path / "online_retail.csv", RETAIL_HEADER + RETAIL_ROW.replace("HEART", "CŒUR"), "cp1252")
    with pytest.raises(ImportDataError, match=r"online_retail\.csv: line 2 \(data row 1\) is not UTF-8: byte 0x8c"):
        import_online_retail(path, db)
    _unchanged(db)


def test_utf8_bom_and_crlf_still_import(tmp_path: Path, db: ShopDB) -> None:
    path = tmp_path / "export.csv"
    path.write_bytes(
        b"\xef\xbb\xbf" + (HEADER + GOOD_ROW + "c2,o2,2024-03-02 10:00:00,7.5\n").replace("\n", "\r\n").encode()
    )
    report = import_orders(path, db)
    assert report.orders == 2
    assert sorted(db.extract("orders").to_pandas().gross_amount) == [5.0, 7.5]


def test_cli_import_prints_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The front door: exit code 2 and one line on stderr (was rc 0 and 12.0 in the shop DB)."""
    monkeypatch.setenv("PROPENSITY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.delenv("PROPENSITY_SHOP_DB", raising=False)
    path = _write(tmp_path / "euro.csv", HEADER + "c1,o1,2024-03-01 10:00:00,12,50\n")
    assert cli.main(["import", "orders", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"propensity import: error: {path}: data row 1 (line 2) has 5 fields but the header has 4; "
        'quote a field that holds the separator, e.g. "12,50"\n'
    )


# --------------------------------------------------------------------------- CSV drops


def test_fx_drop_errors_name_the_file(tmp_path: Path) -> None:
    store = open_store(tmp_path / "drops")
    day = date(2025, 1, 2)
    store.put_bytes(fx_key(day), b"date,currency,base_currency,rate\n2025-01-02,USD,EUR,1,08\n")
    with pytest.raises(ValueError, match=r"fx_rates_2025-01-02\.csv: cannot read fx_rates CSV") as exc:
        read_fx(store, day)
    _one_line(exc)
    store.put_bytes(fx_key(day), "date,currency,base_currency,rate\n2025-01-02,US£,EUR,1.08\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"fx_rates_2025-01-02\.csv: cannot read fx_rates CSV") as exc:
        read_fx(store, day)
    _one_line(exc)


# --------------------------------------------------------------------------- settings YAML


def _settings_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, doc: dict | str) -> Settings:
    path = tmp_path / "propensity.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    monkeypatch.setenv(CONFIG_ENV, str(path))  # load_settings exports it: restored after the test
    # `make test` exports PROPENSITY_HOME, which (as an env var) rightly overrides the YAML's home
    monkeypatch.delenv("PROPENSITY_HOME", raising=False)
    return load_settings(path)


@pytest.mark.parametrize(
    ("doc", "key", "hint"),
    [
        ({"simulaton": {"customers": 10}}, "simulaton", "simulation"),
        ({"validation": {"volume": {"histroy": 3}}}, "validation.volume.histroy", "history"),
        ({"tasks": {"churn": {"horizon_day": 30}}}, "tasks.churn.horizon_day", "horizon_days"),
        ({"audiences": {"controlfraction": 0.2}}, "audiences.controlfraction", "control_fraction"),
        ({"simulation": {"shift": {"day": 3, "sesions": 2.0}}}, "simulation.shift.sesions", "sessions"),
        ({"models": {"Threads": 4}}, "models.Threads", "threads"),
    ],
)
def test_settings_yaml_rejects_unknown_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, doc: dict, key: str, hint: str
) -> None:
    """Silently ignored before: the operator's setting was lost and the default ran."""
    with pytest.raises(ConfigError) as exc:
        _settings_from(tmp_path, monkeypatch, doc)
    assert isinstance(exc.value, RequestError)
    assert _one_line(exc) == f"{tmp_path / 'propensity.yaml'}: unknown key {key!r} (did you mean {hint!r}?)"


def test_settings_yaml_unknown_key_without_a_near_miss_lists_the_known_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as exc:
        _settings_from(tmp_path, monkeypatch, {"calendar": {"zzz": 1}})
    assert _one_line(exc).endswith("unknown key 'calendar.zzz' (known: enabled, promotions)")


def test_settings_yaml_that_is_not_a_mapping_or_not_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "propensity.yaml"
    with pytest.raises(ConfigError) as exc:
        _settings_from(tmp_path, monkeypatch, "- home\n- lake\n")
    assert _one_line(exc) == f"{path}: settings must be a mapping of keys to values, not a list"
    with pytest.raises(ConfigError) as exc:
        _settings_from(tmp_path, monkeypatch, "home: [unclosed\n")
    assert _one_line(exc).startswith(f"{path}: not valid YAML: ")


def test_settings_yaml_known_keys_and_environment_still_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the YAML is strict: env vars override it as before, unrelated ``PROPENSITY_*``
    variables (the stack's, a nested one no model declares) are still ignored, top-level
    YAML keys stay case-insensitive, and ``tasks`` can add and drop tasks."""
    monkeypatch.setenv("PROPENSITY_MODELS__THREADS", "3")
    monkeypatch.setenv("PROPENSITY_STACK_ID", "abc")
    monkeypatch.setenv("PROPENSITY_MLFLOW_UI_URL", "http://localhost:5000")
    monkeypatch.setenv("PROPENSITY_VALIDATION__SOMETHING_ELSE", "1")
    doc = {
        "HOME": str(tmp_path / "home"),
        "models": {"threads": 1, "floors": {"churn": 0.55}},
        "validation": {"docs": False, "severity": {"orders.range": "row"}, "volume": {"history": 5}},
        "tasks": {"conversion": None, "winback": {"horizon_days": 30, "label": "purchase"}},
        "simulation": {"shift": {"day": 3, "device_mix": {"app": 1.0}}, "dirt": {"rate": 0}},
    }
    s = _settings_from(tmp_path, monkeypatch, doc)
    assert s.home == tmp_path / "home"
    assert s.models.threads == 3 and s.models.floors == {"churn": 0.55}
    assert s.validation.volume.history == 5 and not s.validation.docs
    assert list(s.tasks) == ["repurchase", "churn", "clv", "winback"]
    assert s.simulation.shift is not None and s.simulation.shift.device_mix == {"app": 1.0}


def test_empty_settings_yaml_gives_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings_from(tmp_path, monkeypatch, "# nothing yet\n").models.threads == Settings().models.threads


# --------------------------------------------------------------------------- audience YAML


def _audience(**fields) -> dict:
    spec = {
        "name": "win-back",
        "priority": 1,
        "task": "churn",
        "rule": "churn_decile >= 6",
        "max_size": 100,
        "channels": ["email"],
        "offer": {"code": "WB", "cost": 1.0},
    }
    return {**spec, **fields}


def _audiences_file(tmp_path: Path, *specs: dict) -> Path:
    path = tmp_path / "audiences.yaml"
    path.write_text(yaml.safe_dump({"audiences": list(specs)}))
    return path


@pytest.mark.parametrize(
    ("typo", "hint"),
    [("controlfraction", "control_fraction"), ("exclude_purchased_day", "exclude_purchased_days")],
)
def test_audience_yaml_rejects_unknown_keys(tmp_path: Path, typo: str, hint: str) -> None:
    """Ignored before: the control group or the suppression the marketer asked for was lost."""
    path = _audiences_file(tmp_path, _audience(name="cross-sell", priority=2), _audience(**{typo: 7}))
    with pytest.raises(RequestError) as exc:
        load_audiences(path, TASKS)
    assert _one_line(exc) == f"{path}: audience 'win-back': unknown key {typo!r} (did you mean {hint!r}?)"


def test_audience_yaml_rejects_unknown_offer_and_top_level_keys(tmp_path: Path) -> None:
    path = _audiences_file(tmp_path, _audience(offer={"code": "WB", "costs": 1.0}))
    with pytest.raises(RequestError) as exc:
        load_audiences(path, TASKS)
    assert _one_line(exc) == f"{path}: audience 'win-back': unknown key 'offer.costs' (did you mean 'cost'?)"
    path.write_text(yaml.safe_dump({"audiences": [_audience()], "audience": []}))
    with pytest.raises(RequestError) as exc:
        load_audiences(path, TASKS)
    assert _one_line(exc) == f"{path}: unknown key 'audience' (did you mean 'audiences'?)"


def test_audience_name_too_long_fails_at_load(tmp_path: Path) -> None:
    """A 230-character name published its lake partition, then crashed on the CSV write."""
    name = "x" * 230
    path = _audiences_file(tmp_path, _audience(name=name))
    with pytest.raises(RequestError) as exc:
        load_audiences(path, TASKS)
    assert _one_line(exc) == (
        f"{path}: audience #1 ('{name[:40]}...'): name: is 230 characters long; "
        f"at most {MAX_NAME_LENGTH} (the CRM's audience column)"
    )


@pytest.mark.parametrize("name", ["Win Back", "win/back", "-win", "winback!", ""])
def test_audience_name_characters(tmp_path: Path, name: str) -> None:
    path = _audiences_file(tmp_path, _audience(name=name))
    with pytest.raises(RequestError) as exc:
        load_audiences(path, TASKS)
    assert "name: only lower-case letters, digits and '-' (not first)" in _one_line(exc)
    assert str(path) in str(exc.value)


def test_audience_value_errors_are_one_line(tmp_path: Path) -> None:
    path = _audiences_file(tmp_path, _audience(channels=["fax"], max_size=0))
    with pytest.raises(RequestError) as exc:
        load_audiences(path, TASKS)
    message = _one_line(exc)
    assert message.startswith(f"{path}: audience 'win-back': ")
    assert "max_size: " in message and "channels: " in message and "fax" in message


def test_shipped_audiences_still_load() -> None:
    book = load_audiences(PROJECT_CONF / "audiences.yaml", TASKS)
    assert book.audiences and all(len(a.name) <= MAX_NAME_LENGTH for a in book.audiences)


def test_config_errors_are_request_errors_not_data_quality(tmp_path: Path) -> None:
    """Configuration verdicts exit 2 at the CLI; data-quality verdicts (exit 1) are another kind."""
    assert issubclass(ConfigError, RequestError) and not issubclass(ConfigError, DataQualityError)
    with pytest.raises(ConfigError):
        load_audiences(_audiences_file(tmp_path, _audience(controlfraction=0.5)), TASKS)
