"""Hostile input against the real database and a real `sfq api` process: generated specs (hypothesis),
generated HTTP requests (schemathesis), SQL-flavoured and oversized text, and bodies over the size limit.

The properties: equivalent specs hash alike and different ones apart, whichever way they come in; anything
else is refused with a validation error naming its field (never a leaked database error, never a 5xx), and
a refused request leaves nothing behind.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import psycopg
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from queue_app import gateway
from queue_app.api.http import MAX_BODY_BYTES
from queue_app.errors import Rejected
from queue_app.gateway import Submission
from queue_app.spec import FIELDS
from tests.conftest import insert_request

SYMBOLS = ("AAPL", "MSFT", "IBM", "GOOG")
TIMEFRAMES = ("1d", "1h", "5m", "1w")
TARGET_COLS = ("open", "high", "low", "close")
TRANSFORMS = ("log_return", "pct_change", "diff", "raw")
FIELD_NAMES = tuple(f.name for f in FIELDS)
# The request's top-level defaults (the columns' defaults in training_requests).
TOP_DEFAULTS: dict[str, Any] = {
    "timeframe": "1d",
    "target_col": "close",
    "target_transform": "log_return",
    "horizon": 1,
    "algorithm": "RandomForest",
    "hyperparameters": {},
    "train_window": 1000,
    "test_window": 250,
    "cv_folds": 5,
    "cv_strategy": "expanding",
    "context_symbols": [],
    "alpha_grid": [],
    "l1_ratio_grid": [],
    "regime_configs": [],
}
INTEGER_FIELDS = ("horizon", "train_window", "test_window", "cv_folds", "timeout_s")
# Integer ranges that are valid together: train_window >= (cv_folds + 1) x (execution_lag + horizon + 10)
# = 11 x 31 = 341 (execution_lag 1, the default).
RANGES = {"horizon": (1, 20), "cv_folds": (2, 10), "train_window": (341, 5000), "test_window": (10, 1000)}
NOT_FINGERPRINTED = ("timeout_s", "parent_model_id")


def prop(max_examples: int) -> settings:
    """Settings of the property tests (each runs inside its test and counts the examples it ran)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
        ],
    )


# Text PostgreSQL can hold (no NUL: see test_json_the_database_cannot_hold_is_refused for NUL).
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=24)
BIG_INTS = st.integers(min_value=-(10**400), max_value=10**400) | st.sampled_from(
    [2**31 - 1, 2**31, -(2**31) - 1, 2**63 - 1, 2**63, -(2**63) - 1, 10**1000, -(10**1000)]
)
JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | BIG_INTS
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | TEXT, children, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(FIELD_NAMES) | TEXT
ARBITRARY_REQUESTS = st.dictionaries(KEYS, JSON_VALUES, max_size=6)

# Text that has no business in a training request, for every text field.
HOSTILE_TEXT = {
    "sql comment": "'; DROP TABLE models; --",
    "bobby tables": "Robert'); DROP TABLE bars;--",
    "dollar quoting": "$$; DELETE FROM bars; $$",
    "format directives": "%s %(symbol)s {0} %L %I \\x00",
    "control characters": "\x01\x02\x07\x08\x0b\x0c\x1b[2J\x7f\x85\u2028\u2029",
    "line breaks": "AAPL\n--\r\n\t",
    "unicode": "株式会社 ÄÖÜß 🚀 \u202eevil\u202c \u200b e\u0301 \ufeff",
    "quotes": "\"'`\\",
    "1 MB": "A" * 1_000_000,  # under the 1 MiB body limit once in JSON
}


# --- the registry, read from the database ---------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(database) -> dict[str, dict]:
    """algorithm -> {param: {default, rules, expects}}, as the database has it."""
    with psycopg.connect(database) as conn:
        return dict(conn.execute("SELECT name, hyperparameters FROM sfq_algorithms").fetchall())


@pytest.fixture(scope="module")
def features(database) -> tuple[list[str], list[str]]:
    """(every feature, the default set)."""
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT name, is_default FROM sfq_features ORDER BY position").fetchall()
    return [name for name, _ in rows], [name for name, default in rows if default]


@pytest.fixture(scope="module")
def invalid_defaults(database) -> set[tuple[str, str]]:
    """(algorithm, param) whose stated default satisfies none of its own rules."""
    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT a.name, p.key FROM sfq_algorithms a, jsonb_each(a.hyperparameters) p"
            " WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p.value->'rules') r"
            "                    WHERE sfq_rule_matches(p.value->'default', r))"
        ).fetchall()
    return set(rows)


# --- strategies -------------------------------------------------------------------------------------------


def rule_values(rule: dict) -> st.SearchStrategy:
    """Values that satisfy one rule of the hyperparameter contract."""
    kind = rule["type"]
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        return st.sampled_from(rule["enum"]) if "enum" in rule else TEXT
    low, high = rule.get("min"), rule.get("max")
    if kind == "integer":
        low_int = -(10**6) if low is None else math.ceil(low) + (1 if rule.get("min_open") else 0)
        high_int = low_int + 10**6 if high is None else math.floor(high) - (1 if rule.get("max_open") else 0)
        return st.integers(low_int, high_int)
    # Floats up to 1e6 are written with a decimal point (repr switches to 1e+16 only from 1e16 on).
    return st.floats(
        min_value=-1e6 if low is None else low,
        max_value=(1e6 if low is None else low + 1e6) if high is None else high,
        exclude_min=bool(low is not None and rule.get("min_open")),
        exclude_max=bool(high is not None and rule.get("max_open")),
        allow_nan=False,
        allow_infinity=False,
    )


def param_values(contract: dict) -> st.SearchStrategy:
    return st.one_of([rule_values(rule) for rule in contract["rules"]])


def integer_only(contract: dict) -> bool:
    """An integer parameter: 100 and 100.0 are the same value (no float rule to tell them apart)."""
    kinds = [rule["type"] for rule in contract["rules"]]
    return "integer" in kinds and "number" not in kinds


def number_only(contract: dict) -> bool:
    """A real parameter that also takes integers: 1 and 1.0 are the same value."""
    rules = contract["rules"]
    kinds = [rule["type"] for rule in rules]
    return "number" in kinds and "integer" not in kinds and not any(r.get("not_integer") for r in rules)


def utc_timestamps(low: datetime, high: datetime) -> st.SearchStrategy[datetime]:
    return st.datetimes(min_value=low, max_value=high, timezones=st.just(UTC))


@st.composite
def specs(draw, registry: dict, features: tuple[list[str], list[str]]) -> dict:
    """A valid training request: a symbol with bars, the other fields each given or left to their default."""
    spec: dict[str, Any] = {"symbol": draw(st.sampled_from(SYMBOLS))}
    optional = {
        "timeframe": st.sampled_from(TIMEFRAMES),
        "target_col": st.sampled_from(TARGET_COLS),
        "target_transform": st.sampled_from(TRANSFORMS),
        **{name: st.integers(*bounds) for name, bounds in RANGES.items()},
        "features": st.lists(st.sampled_from(features[0]), min_size=1, max_size=6, unique=True),
        "data_end": utc_timestamps(datetime(2001, 1, 1), datetime(2013, 1, 1)).map(datetime.isoformat),
        "timeout_s": st.integers(1, 604800),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            spec[name] = draw(strategy)
    algorithm = draw(st.sampled_from(sorted(registry)))
    if algorithm != "RandomForest" or draw(st.booleans()):
        spec["algorithm"] = algorithm
    contract = registry[algorithm]
    params = draw(st.lists(st.sampled_from(sorted(contract)), max_size=3, unique=True))
    if params or draw(st.booleans()):
        spec["hyperparameters"] = {param: draw(param_values(contract[param])) for param in params}
    return spec


# --- helpers ----------------------------------------------------------------------------------------------


def counts(conn: psycopg.Connection) -> tuple[int, int, int]:
    return conn.execute(
        "SELECT (SELECT count(*) FROM models), (SELECT count(*) FROM training_requests),"
        " (SELECT count(*) FROM procrastinate_jobs)"
    ).fetchone()


def _submit(conn: psycopg.Connection, request: dict, via: str) -> Submission:
    """The request the way the API and the CLI send it (sfq_submit, through the gateway)."""
    return gateway.run(conn, gateway.submit(request, via))


def submit_sql(conn: psycopg.Connection, request: dict) -> Submission:
    """The same request as a plain INSERT (NULL would be NULL there, not the default: nulls are left out)."""
    columns = {
        name: Jsonb(value) if name in ("hyperparameters", "regime_configs") else value
        for name, value in request.items()
        if value is not None
    }
    model_id, fingerprint, deduplicated = insert_request(conn, columns)
    return Submission(model_id, fingerprint, deduplicated, 0, request.get("target_col") or "close")


def kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, int | float) else "string"


def distinct(a: Any, b: Any) -> bool:
    """Different hyperparameter values by any reading (1 and 1.0 are not counted as distinct)."""
    return kind(a) != kind(b) or a != b


def effective(spec: dict) -> dict:
    return {**TOP_DEFAULTS, **spec}


# --- 1. hypothesis: validation and fingerprint canonicalisation -------------------------------------------


def test_equivalent_specs_hash_alike(clean, registry, features, invalid_defaults):
    ran = Counter()

    @prop(150)
    @given(data=st.data())
    def check(data):
        base = data.draw(specs(registry, features), label="base")
        first = _submit(clean, base, "http")
        variant = equivalent_variant(data, base, first.model_id, registry, features, invalid_defaults)
        via_sql = data.draw(st.booleans(), label="via plain SQL INSERT")
        second = submit_sql(clean, variant) if via_sql else _submit(clean, variant, "http")
        assert second.fingerprint == first.fingerprint, (base, variant)
        assert second.model_id == first.model_id and second.deduplicated is True
        ran["sql" if via_sql else "json"] += 1

    check()
    print(f"\nequivalent specs: {sum(ran.values())} examples {dict(ran)}")
    assert sum(ran.values()) >= 150 and min(ran.values()) >= 10


def equivalent_variant(data, base: dict, base_id: int, registry, features, invalid_defaults) -> dict:
    """The same request written differently."""
    draw = data.draw
    variant = copy.deepcopy(base)
    if draw(st.booleans(), label="symbol in lower case"):
        variant["symbol"] = variant["symbol"].lower()
    if draw(st.booleans(), label="symbol padded"):
        variant["symbol"] = " " * draw(st.integers(1, 3)) + variant["symbol"] + " " * draw(st.integers(0, 3))
    if "features" in base:
        shuffled = draw(st.permutations(base["features"]), label="features permuted")
        variant["features"] = shuffled + draw(
            st.lists(st.sampled_from(shuffled), max_size=4), label="duplicates"
        )
    for name in INTEGER_FIELDS:
        if name in base and draw(st.booleans(), label=f"{name} as a float"):
            variant[name] = float(base[name])
    if "data_end" in base and draw(st.booleans(), label="data_end in another time zone"):
        offset = timedelta(minutes=15 * draw(st.integers(-48, 56)))
        variant["data_end"] = (
            datetime.fromisoformat(base["data_end"]).astimezone(timezone(offset)).isoformat()
        )

    algorithm = effective(base)["algorithm"]
    contract = registry[algorithm]
    given_params = dict(base.get("hyperparameters", {}))
    params = {}
    for param, value in given_params.items():
        if (
            type(value) is int
            and integer_only(contract[param])
            and draw(st.booleans(), label=f"{param} float")
        ):
            value = float(value)
        elif type(value) is float and value.is_integer() and number_only(contract[param]):
            value = int(value) if draw(st.booleans(), label=f"{param} int") else value
        params[param] = value
    for param in sorted(set(contract) - set(given_params)):
        if (algorithm, param) not in invalid_defaults and draw(st.booleans(), label=f"{param} default"):
            params[param] = contract[param]["default"]
    if params or "hyperparameters" in base:
        order = draw(st.permutations(sorted(params)), label="hyperparameter order")
        variant["hyperparameters"] = {param: params[param] for param in order}

    # Omitted fields: left out, given as null (= the default) or given explicitly at their default.
    omitted = [name for name in (*TOP_DEFAULTS, "features", "data_end", "timeout_s") if name not in variant]
    for name in omitted:
        choices = ["omit", "null"] + (["default"] if name in TOP_DEFAULTS or name == "features" else [])
        choice = draw(st.sampled_from(choices), label=f"{name} omitted as")
        if choice == "null":
            variant[name] = None
        elif choice == "default":
            variant[name] = features[1][::-1] if name == "features" else copy.deepcopy(TOP_DEFAULTS[name])
    # Not part of the fingerprint.
    if draw(st.booleans(), label="another timeout_s"):
        variant["timeout_s"] = draw(st.integers(1, 604800))
    if draw(st.booleans(), label="parent_model_id"):
        variant["parent_model_id"] = base_id
    order = draw(st.permutations(sorted(variant)), label="key order")
    return {name: variant[name] for name in order}


CHANGES = (
    "symbol",
    "timeframe",
    "horizon",
    "train_window",
    "test_window",
    "cv_folds",
    "target_col",
    "target_transform",
    "algorithm",
    "hyperparameter",
    "features",
    "data_end",
    *NOT_FINGERPRINTED,
)


def test_different_specs_hash_apart(clean, registry, features):
    ran = Counter()

    @prop(50)
    @given(data=st.data())
    def check(data):
        base = data.draw(specs(registry, features), label="base")
        first = _submit(clean, base, "http")
        for field in CHANGES:  # each field changed on its own
            different_spec(clean, registry, features, data, base, first, field)
        ran["bases"] += 1
        ran["changes"] += len(CHANGES)

    check()
    print(f"\ndifferent specs: {ran['bases']} examples x {len(CHANGES)} fields = {ran['changes']} changes")
    assert ran["bases"] >= 50


def different_spec(conn: psycopg.Connection, registry, features, data, base, first, field) -> None:
    """Change one field of a valid spec: another fingerprint, unless the field is not fingerprinted."""
    draw = data.draw
    current = effective(base)
    changed = copy.deepcopy(base)
    if field in ("symbol", "timeframe", "target_col", "target_transform"):
        choices = {"symbol": SYMBOLS, "timeframe": TIMEFRAMES, "target_col": TARGET_COLS}
        options = [c for c in choices.get(field, TRANSFORMS) if c != current[field]]
        changed[field] = draw(st.sampled_from(options))
    elif field in RANGES:
        changed[field] = draw(st.integers(*RANGES[field]).filter(lambda v: v != current[field]))
    elif field == "algorithm":
        changed["algorithm"] = draw(st.sampled_from(sorted(set(registry) - {current["algorithm"]})))
        changed.pop("hyperparameters", None)
    elif field == "hyperparameter":
        contract = registry[current["algorithm"]]
        param = draw(st.sampled_from(sorted(contract)))
        old = current["hyperparameters"].get(param, contract[param]["default"])
        new = draw(param_values(contract[param]).filter(lambda v: distinct(v, old)))
        changed["hyperparameters"] = {**current["hyperparameters"], param: new}
    elif field == "features":
        old = set(base.get("features", features[1]))
        subsets = st.lists(st.sampled_from(features[0]), min_size=1, max_size=8, unique=True)
        changed["features"] = draw(subsets.filter(lambda fs: set(fs) != old))
    elif field == "data_end":
        # Months away: another bar (or, for a timeframe without bars, another instant).
        if "data_end" in base:
            old = datetime.fromisoformat(base["data_end"])
            shift = timedelta(days=draw(st.integers(30, 1500)) * (1 if old.year < 2007 else -1))
            changed["data_end"] = (old + shift).isoformat()
        else:
            changed["data_end"] = "2005-06-15T00:00:00Z"  # the default is the latest bar (2013) or none
    elif field == "timeout_s":
        changed["timeout_s"] = draw(st.integers(1, 604800))
    else:
        changed["parent_model_id"] = first.model_id
    second = _submit(conn, changed, "http")
    if field in NOT_FINGERPRINTED:
        assert second.fingerprint == first.fingerprint and second.deduplicated, (field, base, changed)
    else:
        assert second.fingerprint != first.fingerprint, (field, base, changed)
        assert second.model_id != first.model_id


def test_one_and_one_point_zero_stay_apart_where_scikit_learn_tells_them_apart(clean):
    """max_features 1 is one feature, 1.0 all of them; n_estimators 100 and 100.0 are the same."""
    one, one_point_zero = (
        _submit(clean, {"symbol": "IBM", "hyperparameters": {"max_features": value}}, "http").fingerprint
        for value in (1, 1.0)
    )
    assert one != one_point_zero
    same = {
        _submit(clean, {"symbol": "IBM", "hyperparameters": {"n_estimators": v}}, "http")
        for v in (100, 100.0)
    }
    assert len({s.fingerprint for s in same}) == 1
    assert _submit(clean, {"symbol": "IBM"}, "http").fingerprint == one_point_zero  # 1.0 is the default


def test_every_default_satisfies_its_own_rules(invalid_defaults, registry):
    """A parameter written at its stated default must be accepted (and hash like the omitted one)."""
    assert invalid_defaults == set(), {
        f"{algorithm}.{param}": (registry[algorithm][param]["default"], registry[algorithm][param]["expects"])
        for algorithm, param in sorted(invalid_defaults)
    }


@st.composite
def near_valid_requests(draw, registry, features) -> dict:
    """A valid request with a few fields (or hyperparameters) replaced by arbitrary JSON."""
    request = draw(specs(registry, features))
    for key in draw(st.lists(KEYS, min_size=1, max_size=3)):
        request[key] = draw(JSON_VALUES)
    if draw(st.booleans()):
        algorithm = effective(request)["algorithm"]
        contract = registry[algorithm if isinstance(algorithm, str) and algorithm in registry else "Ridge"]
        hostile = st.dictionaries(
            st.sampled_from(sorted(contract)) | TEXT, JSON_VALUES, min_size=1, max_size=3
        )
        request["hyperparameters"] = draw(hostile)
    return request


def test_anything_else_is_refused_with_a_validation_error_naming_its_field(clean, registry, features):
    ran = Counter()

    @prop(400)
    @given(request=ARBITRARY_REQUESTS | near_valid_requests(registry, features))
    def check(request):
        before = counts(clean)
        try:
            accepted = _submit(clean, request, "http")
        except Rejected as rejected:
            assert rejected.message.startswith("invalid training request: "), rejected.message
            assert rejected.field is not None, rejected.message
            head = re.split(r"[.\[]", rejected.field)[0]  # hyperparameters.alpha, regime_configs[0].kind
            assert rejected.field in request or head in FIELD_NAMES or head == "request", rejected.field
            assert counts(clean) == before, "a refused request left rows behind"
            ran["refused"] += 1
        else:
            assert len(accepted.fingerprint) == 64 and accepted.model_id > 0
            ran["accepted"] += 1

    check()
    print(f"\narbitrary requests: {sum(ran.values())} examples {dict(ran)}")
    assert sum(ran.values()) >= 400 and ran["refused"] > 100 and ran["accepted"] > 0


def test_json_the_database_cannot_hold_is_refused(clean):
    """NUL characters, lone surrogates: refused (jsonb holds neither) with a message, and nothing stored."""
    before = counts(clean)
    for request in (
        {"symbol": "AA\x00PL"},
        {"symbol": "AAPL", "hyperparameters": {"criterion\x00": "squared_error"}},
        {"symbol": "AAPL", "algorithm": "HistGradientBoosting", "hyperparameters": {"scoring": "loss\x00"}},
        {"symbol": "AAPL", "features": ["ret_1\x00"]},
        {"symbol": "\ud800"},
    ):
        with pytest.raises(Rejected) as refused:
            _submit(clean, request, "http")
        assert refused.value.message, request
    assert counts(clean) == before


# --- 2. schemathesis against the running API --------------------------------------------------------------

SCHEMATHESIS_BUDGET = {
    ("POST /train", GenerationMode.POSITIVE): 260,
    ("POST /train", GenerationMode.NEGATIVE): 260,
    ("GET /models", GenerationMode.POSITIVE): 160,
    ("GET /models", GenerationMode.NEGATIVE): 160,
    ("GET /models/{model_id}", GenerationMode.POSITIVE): 110,
    ("GET /models/{model_id}", GenerationMode.NEGATIVE): 110,
    ("GET /healthz", GenerationMode.POSITIVE): 5,  # no parameters: one distinct request
    ("GET /metrics", GenerationMode.POSITIVE): 5,
    **{
        (label, mode): examples
        for label, examples in (
            ("POST /train/batch", 60),
            ("POST /retrain/{model_id}", 40),
            ("POST /api/train_with_parent", 60),
            ("POST /models/{model_id}/cancel", 25),
            ("GET /models/{model_id}/lineage", 25),
            ("GET /models/{model_id}/features", 15),
            ("GET /models/{model_id}/predictions", 15),
            ("GET /models/{model_id}/artifact", 15),
            ("POST /models/{model_id}/predict", 25),
            ("POST /models/{model_id}/lockbox", 25),
            ("GET /forecasts/{forecast_id}", 15),
            ("GET /models/{model_id}/simulations", 15),
            ("POST /simulate", 40),
            ("GET /simulations/{simulation_id}", 15),
            ("POST /sweeps", 60),
            ("GET /sweeps/{sweep_id}", 25),
            ("GET /strategies/{name}", 15),
            ("GET /strategies/{name}/history", 15),
            ("POST /strategies/{name}/aliases/{alias}", 40),
            ("PUT /strategies/{name}/aliases/{alias}/retrain-policy", 40),
            ("POST /studies", 60),
            ("GET /studies/{study_id}", 25),
            ("POST /studies/{study_id}/stop", 15),
        )
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    },
}


# The whole budget (over 1,000 requests) in `scripts/test -m slow`; `scripts/test` sends two fifths of each
# operation's share (README, "Tests").
@pytest.mark.parametrize(
    "share", [pytest.param(1.0, marks=pytest.mark.slow), 0.4], ids=["whole-budget", "two-fifths"]
)
def test_schemathesis_finds_no_server_error(clean, start_api, share):
    url = start_api()
    for symbol in SYMBOLS:  # models to find, list and sort (ids 1..8, small ids are generated often)
        for algorithm in ("Ridge", "RandomForest"):
            _submit(clean, {"symbol": symbol, "algorithm": algorithm}, "http")
    clean.execute(
        "UPDATE models SET status = 'completed', metrics = '{\"rmse\": 0.01, \"directional_accuracy\": 0.52}'"
        " WHERE id % 2 = 0"
    )
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    operations = {result.ok().label: result.ok() for result in schema.get_all_operations()}
    assert set(operations) == {label for label, _ in SCHEMATHESIS_BUDGET}
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    session = requests.Session()
    sent: Counter = Counter()
    statuses: Counter = Counter()
    started = time.monotonic()

    def exercise(label: str, mode: GenerationMode, examples: int) -> None:
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: report the first failure as sent
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operations[label].as_strategy(generation_mode=mode))
        def call(case):
            if isinstance((case.query or {}).get("wait"), int):
                # No worker runs here, so a valid `wait` is slept in full: keep it short (waiting for a
                # worker's answer is tested with real workers in test_operations and test_simulation).
                case.query["wait"] = min(case.query["wait"], 2)
            response = case.call(base_url=url, session=session, timeout=30)
            sent[label, mode.value] += 1
            statuses[label, response.status_code] += 1
            case.validate_response(response, checks=checks)

        call()

    for (label, mode), examples in SCHEMATHESIS_BUDGET.items():
        exercise(label, mode, max(1, round(examples * share)))
    total = sum(sent.values())
    print(f"\nschemathesis: {total} requests in {time.monotonic() - started:.1f} s: {dict(sent)}")
    print(f"statuses: {dict(sorted(statuses.items()))}")
    assert total >= 1000 * share
    assert not [key for key in statuses if key[1] >= 500]


# --- 3. hostile values: plain SQL and HTTP ------------------------------------------------------------------


def refused(conn: psycopg.Connection, columns: dict) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as error:
        insert_request(conn, columns)
    return error.value


def table_rows(conn: psycopg.Connection) -> dict[str, int | None]:
    return {
        table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0]
        else None
        for table in ("models", "bars", "training_requests")
    }


def test_sql_insert_refuses_missing_mistyped_out_of_range_and_unknown_values_naming_the_field(clean):
    good = insert_request(clean, {"symbol": "AAPL", "algorithm": "Ridge"})
    before = table_rows(clean)
    assert before["bars"] > 1000 and before["models"] == 1

    for columns, field in [
        ({"symbol": None}, "symbol"),
        ({"algorithm": "Ridge"}, "symbol"),
        ({"symbol": "AAPL", "timeframe": None}, "timeframe"),
        ({"symbol": "AAPL", "horizon": None}, "horizon"),
        ({"symbol": "AAPL", "horizon": 0}, "horizon"),
        ({"symbol": "AAPL", "horizon": 1001}, "horizon"),
        ({"symbol": "AAPL", "cv_folds": 1}, "cv_folds"),
        ({"symbol": "AAPL", "cv_folds": 51}, "cv_folds"),
        ({"symbol": "AAPL", "train_window": 49}, "train_window"),
        ({"symbol": "AAPL", "train_window": 100, "cv_folds": 10}, "train_window"),
        ({"symbol": "AAPL", "test_window": 9}, "test_window"),
        ({"symbol": "AAPL", "timeout_s": 0}, "timeout_s"),
        ({"symbol": "AAPL", "timeout_s": 604801}, "timeout_s"),
        ({"symbol": "AAPL", "algorithm": "SVM"}, "algorithm"),
        ({"symbol": "AAPL", "target_col": "volume"}, "target_col"),
        ({"symbol": "AAPL", "target_transform": "log"}, "target_transform"),
        ({"symbol": "AAPL", "timeframe": "1x"}, "timeframe"),
        ({"symbol": "AAPL", "cv_strategy": "walk_forward"}, "cv_strategy"),
        ({"symbol": "AAPL", "cv_strategy": "rolling"}, "cv_strategy"),
        ({"symbol": "AAPL", "features": ["ret_1", "moon_phase"]}, "features"),
        ({"symbol": "AAPL", "features": []}, "features"),
        ({"symbol": "AAPL", "features": ["ret_1", None]}, "features"),
        ({"symbol": "AAPL", "hyperparameters": Jsonb({"n_trees": 5})}, "hyperparameters.n_trees"),
        ({"symbol": "AAPL", "hyperparameters": Jsonb({"n_estimators": 0})}, "hyperparameters.n_estimators"),
        (
            {"symbol": "AAPL", "hyperparameters": Jsonb({"n_estimators": "many"})},
            "hyperparameters.n_estimators",
        ),
        ({"symbol": "AAPL", "hyperparameters": Jsonb([1, 2])}, "hyperparameters"),
        ({"symbol": "AAPL", "regime_configs": Jsonb({})}, "regime_configs"),
        ({"symbol": "AAPL", "context_symbols": ["SPY"]}, "context_symbols"),
        ({"symbol": "AAPL", "parent_model_id": 999999}, "parent_model_id"),
    ]:
        error = refused(clean, columns)
        assert error.sqlstate in ("22023", "0A000"), (columns, error.sqlstate, error)
        assert error.diag.column_name == field, (columns, error.diag.column_name)
        assert error.diag.message_primary.startswith(f"invalid training request: {field}: "), error

    # Mistyped literals fail in PostgreSQL's own input functions: a DataError naming the type and the value.
    for literal, problem in [
        ("INSERT INTO training_requests (symbol, horizon) VALUES ('AAPL', 'soon')", 'integer: "soon"'),
        ("INSERT INTO training_requests (symbol, cv_folds) VALUES ('AAPL', '5 folds')", 'integer: "5 folds"'),
        ("INSERT INTO training_requests (symbol, horizon) VALUES ('AAPL', 99999999999)", "out of range"),
        ("INSERT INTO training_requests (symbol, features) VALUES ('AAPL', 'ret_1')", "malformed array"),
        ("INSERT INTO training_requests (symbol, hyperparameters) VALUES ('AAPL', '{oops')", "json"),
        ("INSERT INTO training_requests (symbol, data_end) VALUES ('AAPL', 'next tuesday')", "timestamp"),
        (
            "INSERT INTO training_requests (symbol, alpha_grid) VALUES ('AAPL', '{0.1,lots}')",
            "double precision",
        ),
    ]:
        with pytest.raises(psycopg.DataError) as error:
            clean.execute(literal)
        assert problem in str(error.value), (literal, str(error.value))

    assert table_rows(clean) == before
    assert clean.execute("SELECT id FROM models").fetchall() == [(good[0],)]


def hostile_requests(wrap=lambda hyperparameters: hyperparameters) -> list[tuple[str, dict, str | None]]:
    """(label, request, field named by the refusal or None when the value is stored). `wrap` turns a
    hyperparameters dict into what the way in takes (Jsonb for a plain SQL INSERT, the dict for HTTP)."""
    cases = []
    for name, text in HOSTILE_TEXT.items():
        for field in ("symbol", "timeframe", "target_col", "target_transform", "algorithm", "cv_strategy"):
            cases.append((f"{field} {name}", {"symbol": "AAPL", field: text}, field))
        cases += [
            (f"features {name}", {"symbol": "AAPL", "features": ["ret_1", text]}, "features"),
            (f"context_symbols {name}", {"symbol": "AAPL", "context_symbols": [text]}, "context_symbols"),
            (
                f"criterion {name}",
                {"symbol": "AAPL", "hyperparameters": wrap({"criterion": text})},
                "hyperparameters.criterion",
            ),
            (
                f"selection {name}",
                {"symbol": "AAPL", "algorithm": "ElasticNet", "hyperparameters": wrap({"selection": text})},
                "hyperparameters.selection",
            ),
            (
                f"hyperparameter name {name}",
                {"symbol": "AAPL", "hyperparameters": wrap({text: 1})},
                f"hyperparameters.{text}",
            ),
            (f"data_end {name}", {"symbol": "AAPL", "data_end": text}, "data_end"),
            (
                f"scoring {name}",
                {
                    "symbol": "AAPL",
                    "algorithm": "HistGradientBoosting",
                    "hyperparameters": wrap({"scoring": text}),
                },
                None,
            ),
        ]
    return cases


def test_sql_insert_stores_or_refuses_hostile_text_cleanly(clean):
    insert_request(clean, {"symbol": "MSFT"})
    before = table_rows(clean)
    stored = 0
    for label, columns, field in hostile_requests(Jsonb):
        if field is None:
            model_id, fingerprint, _ = insert_request(clean, columns)
            value = columns["hyperparameters"].obj["scoring"]
            assert clean.execute(
                "SELECT hyperparameters->>'scoring', m.spec->'hyperparameters'->>'scoring'"
                " FROM models m WHERE id = %s",
                (model_id,),
            ).fetchone() == (value, value), label
            stored += 1
            continue
        error = refused(clean, columns)
        assert isinstance(error, psycopg.DataError) or error.sqlstate == "0A000", (label, type(error))
        if field == "data_end":  # the timestamp input function refuses it before the trigger runs
            assert error.sqlstate in ("22007", "22008"), (label, error.sqlstate)
        else:
            assert error.diag.column_name == field, (label, (error.diag.column_name or "")[:80])
    # NUL: psycopg itself refuses it for text, PostgreSQL for jsonb.
    with pytest.raises(psycopg.DataError):
        insert_request(clean, {"symbol": "AA\x00PL"})
    with pytest.raises(psycopg.DataError):
        insert_request(clean, {"symbol": "AAPL", "hyperparameters": Jsonb({"criterion": "a\x00"})})

    after = table_rows(clean)
    assert after["bars"] == before["bars"] and after["models"] == before["models"] + stored
    assert after["training_requests"] == before["training_requests"] + stored
    assert stored == len(HOSTILE_TEXT)


def hostile_bodies() -> list[tuple[str, dict, str | None]]:
    """The hostile requests as HTTP bodies, plus hostile field names (a SQL INSERT cannot name them)."""
    names = [(f"field name {name}", {"symbol": "AAPL", text: 1}, text) for name, text in HOSTILE_TEXT.items()]
    return hostile_requests() + names


def assert_json_error(response: httpx.Response, label: str) -> dict:
    assert 400 <= response.status_code < 500, (label, response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), label
    body = response.json()
    assert isinstance(body["error"], str) and body["error"], (label, body)
    return body


def test_http_train_answers_4xx_json_for_hostile_text_never_5xx(clean, api):
    before = table_rows(clean)
    stored = 0
    for label, body, field in hostile_bodies():
        response = api.post("/train", json=body)
        if field is None:
            assert response.status_code == 201, (label, response.text[:300])
            model = api.get(f"/models/{response.json()['model_id']}").json()
            assert model["hyperparameters"]["scoring"] == body["hyperparameters"]["scoring"], label
            stored += 1
            continue
        error = assert_json_error(response, label)
        assert response.status_code == 422 and error["detail"]["field"] == field, (label, str(error)[:300])

    # Not what the database can hold, or not JSON at all: still a 4xx JSON error.
    raw_bodies = {
        "NUL in symbol": b'{"symbol": "AA\\u0000PL"}',
        "NUL in a hyperparameter name": b'{"symbol": "AAPL", "hyperparameters": {"a\\u0000": 1}}',
        "lone surrogate": b'{"symbol": "\\ud800"}',
        "number overflowing a float": b'{"symbol": "AAPL", "horizon": 1e999}',
        "integer of 5000 digits": b'{"symbol": "AAPL", "horizon": ' + b"9" * 5000 + b"}",
        "NaN": b'{"symbol": "AAPL", "hyperparameters": {"alpha": NaN}}',
        "invalid UTF-8": b'{"symbol": "\xff\xfe"}',
        "UTF-16 BOM": b"\xff\xfe{",
        "empty": b"",
        "a string": b'"AAPL"',
        "null": b"null",
        "an array": b'[{"symbol": "AAPL"}]',
        "SQL": b"SELECT 1; DROP TABLE models",
    }
    for depth in (*range(900, 1010, 4), 5000, 200_000):  # around and far beyond Python's recursion limit
        nested = b"[" * depth + b"]" * depth
        raw_bodies[f"nested {depth} deep"] = nested
        raw_bodies[f"nested {depth} deep in a hyperparameter"] = (
            b'{"symbol": "AAPL", "hyperparameters": {"max_depth": ' + nested + b"}}"
        )
        raw_bodies[f"nested {depth} deep in regime_configs"] = (
            b'{"symbol": "AAPL", "regime_configs": ' + nested + b"}"
        )
    for label, content in raw_bodies.items():
        response = api.post("/train", content=content, headers={"content-type": "application/json"})
        assert_json_error(response, label)

    after = table_rows(clean)
    assert after["bars"] == before["bars"] and after["models"] == before["models"] + stored
    assert stored == len(HOSTILE_TEXT)
    assert api.get("/healthz").json()["status"] == "ok"


def test_http_models_query_parameters_with_hostile_text_never_5xx(clean, api):
    api.post("/train", json={"symbol": "AAPL", "algorithm": "Ridge"})
    texts = [text for name, text in HOSTILE_TEXT.items() if name != "1 MB"]  # a URL is not a body
    for text in (*texts, "A" * 4000, "\x00", "-1", "1e3", "99999999999999999999"):
        for name in ("status", "symbol", "algorithm", "sort", "order", "limit", "offset"):
            response = api.get("/models", params={name: text})
            assert response.status_code in (200, 422), (
                name,
                text[:40],
                response.status_code,
                response.text[:200],
            )
            assert response.headers["content-type"].startswith("application/json")
    for model_id in ("0", "99999999999999999999", "-1", "1.5", "%00", "1%20OR%201=1"):
        response = api.get(f"/models/{model_id}")
        assert response.status_code == 404, (model_id, response.status_code, response.text[:200])


def not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def read_back_failures(api: httpx.Client, model_id: int, symbol: str, how: str) -> list[str]:
    """What goes wrong reading an accepted model back over HTTP: not 200, or not strict JSON."""
    failures = []
    for path in (f"/models/{model_id}", f"/models?symbol={symbol}"):
        got = httpx.get(f"{api.base_url}{path}", timeout=30)  # a new connection: a 500 closes one
        if got.status_code != 200:
            failures.append(f"{how}; GET {path} -> {got.status_code} {got.text}")
            continue
        try:
            json.loads(got.text, parse_constant=not_json)
        except ValueError as exc:
            failures.append(f"{how}; GET {path} -> 200 but not JSON ({exc}): {got.text[:160]}...")
    return failures


def test_accepted_requests_can_be_read_back_over_http(clean, api):
    """What the database accepts, the API can answer with: PostgreSQL takes timestamps from 4713 BC to
    294276 and +-infinity, numbers of thousands of digits; Python's datetime only years 1 to 9999, its
    JSON integers 4300 digits, its floats up to 1.8e308."""
    failures = []
    for symbol in ("AAPL", "ZZZZ"):  # with bars (data_end pinned to a bar when one is before it) and without
        for data_end in (
            "infinity",
            "-infinity",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "20000-01-01T00:00:00Z",
            "1000-01-01T00:00:00Z",
        ):
            body = {"symbol": symbol, "data_end": data_end}
            posted = api.post("/train", json=body)
            assert posted.status_code < 500, (body, posted.text)
            if posted.status_code >= 400:
                assert_json_error(posted, str(body))
                continue
            model_id = posted.json()["model_id"]
            how = f"POST /train {json.dumps(body)} -> {posted.status_code}"
            failures += read_back_failures(api, model_id, symbol, how)
            clean.execute("DELETE FROM models WHERE id = %s", (model_id,))  # one bad row at a time
    # Numbers that only a plain SQL INSERT can write (HTTP bodies are parsed by Python first).
    for hyperparameters in ('{"n_estimators": 1e5000}', '{"ccp_alpha": 1e5000}', '{"max_depth": 1e400}'):
        try:
            model_id = insert_request(clean, {"symbol": "IBM", "hyperparameters": hyperparameters})[0]
        except psycopg.DataError:
            continue  # refused: fine
        how = f"INSERT INTO training_requests (symbol, hyperparameters) VALUES ('IBM', '{hyperparameters}')"
        failures += read_back_failures(api, model_id, "IBM", how)
        clean.execute("DELETE FROM models WHERE id = %s", (model_id,))
    assert not failures, "\n".join(failures)


# --- 4. body size limit -----------------------------------------------------------------------------------


def test_train_body_over_one_mib_is_413_declared_or_chunked(clean, api):
    assert MAX_BODY_BYTES == 1 << 20
    request = json.dumps({"symbol": "GOOG", "algorithm": "Ridge"}).encode()

    exactly = request + b" " * (MAX_BODY_BYTES - len(request))  # valid JSON padded to the limit
    response = api.post("/train", content=exactly, headers={"content-type": "application/json"})
    assert response.status_code == 201, response.text
    assert response.request.headers["content-length"] == str(MAX_BODY_BYTES)

    for size in (MAX_BODY_BYTES + 1, 8 * MAX_BODY_BYTES):
        response = api.post("/train", content=request + b" " * (size - len(request)))
        assert response.request.headers["content-length"] == str(size)
        assert response.status_code == 413, (size, response.status_code)
        assert "larger than 1048576 bytes" in assert_json_error(response, f"{size} bytes")["error"]

    def chunked(total: int, chunk: int = 64 * 1024):
        yield request
        sent = len(request)
        while sent < total:
            piece = min(chunk, total - sent)
            yield b" " * piece
            sent += piece

    for total in (MAX_BODY_BYTES + 1, 4 * MAX_BODY_BYTES):
        response = api.post("/train", content=chunked(total))
        assert response.request.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in response.request.headers
        assert response.status_code == 413, (total, response.status_code)
        assert "larger than 1048576 bytes" in assert_json_error(response, f"{total} bytes chunked")["error"]

    response = api.post("/train", content=chunked(MAX_BODY_BYTES, chunk=1000))  # chunked, at the limit
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 200 and response.json()["deduplicated"] is True, response.text

    assert clean.execute("SELECT count(*) FROM models").fetchone()[0] == 1
    assert api.get("/healthz").status_code == 200
