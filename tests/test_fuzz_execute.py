"""The served ``execute`` function under fuzzing: a corpus of adversarial bodies, headers, tokens
and methods, then hypothesis-generated intents with every field bent, over keep-alive HTTP on
127.0.0.1 against the real functions framework, the embedded store on disk and the local Alpaca
server.

What must hold for every request: no 5xx; every 4xx from the function is JSON with ``error`` and
``reason``; a refused request commits nothing to the store (``PRAGMA data_version`` of the SQLite
file, which changes with every commit of another connection) and sends no order; a number is
exact or refused (an accepted qty is the qty sent). Afterwards the function still serves a valid
request, and its log holds no traceback.
"""

from __future__ import annotations

import base64
import http.client
import json
import random
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.alpaca_simulator import FakeAlpaca, running
from devtools.emulators import PROJECT
from devtools.tokens import unsigned_token
from tests.test_http_execute import TRADER, served

# At least this many requests in one run (the proof), the corpus included.
MIN_REQUESTS = 10_000
VALID = {
    "strategy_id": "fuzz",
    "broker_account_id": "alpaca_main",
    "symbol": "AAPL",
    "side": "buy",
    "qty": 1,
}


class Raw(str):
    """JSON text written into a body as it is (a number token JSON libraries would not write)."""


class Pairs(list[tuple[str, Any]]):
    """An object written pair by pair: the same key may appear twice."""


def encode(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{json.dumps(key)}:{encode(item)}" for key, item in value) + "}"
    if isinstance(value, dict):
        return encode(Pairs(value.items()))
    if isinstance(value, list):
        return "[" + ",".join(encode(item) for item in value) + "]"
    return json.dumps(value)


def token(claims: dict[str, Any] | None = None, **overrides: Any) -> str:
    return unsigned_token({**TRADER, **(claims or {}), **overrides})


def forged(payload: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part(header or {'alg': 'none'})}.{part(payload)}."


@dataclass
class Tally:
    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Target:
    """The served function, its store file and the local Alpaca server, with the checks every
    request goes through."""

    url: str
    store: str
    log: Path
    fake: FakeAlpaca
    ledger: Path | None = None  # the embedded store's file
    firestore: Any = None  # a client of the emulator the function writes to
    tally: Tally = field(default_factory=Tally)
    _conn: http.client.HTTPConnection | None = None
    _db: sqlite3.Connection | None = None

    def connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            host, port = self.url.removeprefix("http://").split(":")
            self._conn = http.client.HTTPConnection(host, int(port), timeout=60)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._db is not None:
            self._db.close()
        if self.firestore is not None:
            self.firestore.close()

    def commits(self) -> int:
        """A number that changes with every write to the store: the SQLite file's data version
        (bumped by each commit of another connection); on Firestore the documents created where
        every execution writes (a decision for every intent executed, the position a claim
        creates): a refused request that executed anything would add one."""
        if self.firestore is not None:
            return sum(
                int(self.firestore.collection_group(group).count().get()[0][0].value)
                for group in ("decisions", "positions")
            )
        if self._db is None:
            assert self.ledger is not None
            self._db = sqlite3.connect(self.ledger)
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def send(
        self, body: bytes | str | None, headers: dict[str, str | bytes] | None = None, method: str = "POST"
    ) -> tuple[int, Any]:
        """One request on the kept-alive connection (a new one when the server closed it), checked
        against the invariants; the status and the decoded answer."""
        data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        commits, orders = self.commits(), self.fake.requests_to("POST", "/v2/orders")
        for attempt in range(2):
            conn = self.connection()
            try:
                conn.putrequest(method, "/", skip_accept_encoding=True)
                sent = {"Content-Length": str(len(data or b""))} | dict(headers or {})
                for name, value in sent.items():
                    conn.putheader(name, value)
                conn.endheaders(data)
                response = conn.getresponse()
                raw = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionError, http.client.BadStatusLine):
                conn.close()
                self._conn = None
                if attempt:
                    raise
        if response.will_close:
            conn.close()
            self._conn = None
        status = response.status
        self.tally.requests += 1
        self.tally.by_status[status] = self.tally.by_status.get(status, 0) + 1
        context = f"{method} {data[:300]!r} {headers} -> {status} {raw[:500]!r}"
        assert status < 500, context
        answer = json.loads(raw) if raw else None
        if status >= 400:
            if method != "HEAD":
                assert isinstance(answer, dict), context
                assert isinstance(answer.get("error"), str), context
                assert isinstance(answer.get("reason"), str), context
                assert answer["reason"], context
            assert self.commits() == commits, f"a refused request wrote to the store: {context}"
            assert self.fake.requests_to("POST", "/v2/orders") == orders, (
                f"a refused request sent an order: {context}"
            )
        return status, answer

    def post(
        self, body: Any, headers: dict[str, str | bytes] | None = None, **token_claims: Any
    ) -> tuple[int, Any]:
        text = body if isinstance(body, bytes | str) else encode(body)
        auth = {"Authorization": f"Bearer {token(**token_claims)}", "Content-Type": "application/json"}
        return self.send(text, auth | dict(headers or {}))


# The full run on the embedded store; a shorter one on the Firestore emulator, whose limits (document
# ids, field names, nesting) are the deployed ones.
REQUESTS_BY_STORE = {"sqlite": MIN_REQUESTS, "firestore": 800}


@pytest.fixture(scope="module", params=list(REQUESTS_BY_STORE))
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    fake = FakeAlpaca()
    for symbol, bid, ask in (("AAPL", "189.99", "190.01"), ("BTC/USD", "50000", "50001")):
        fake.set_quote(symbol, bid, ask)
    env = {"EXEC_BODY_READ_SECONDS": "2"}
    ledger, firestore_client = None, None
    if request.param == "sqlite":
        ledger = tmp_path_factory.mktemp("fuzz") / "ledger.sqlite3"
        env |= {"EXEC_STORE": "sqlite", "EXEC_SQLITE_PATH": str(ledger)}
    else:
        from google.cloud import firestore

        emulator = request.getfixturevalue("firestore_emulator")
        env |= {"EXEC_STORE": "firestore", "FIRESTORE_EMULATOR_HOST": emulator.host}
        firestore_client = firestore.Client(project=PROJECT)
    with running(fake) as alpaca_url, served("execute", alpaca_url, env) as url:
        port = url.rsplit(":", 1)[1]
        log = next(Path(p) for p in _function_logs() if p.name.endswith(f"-{port}.log"))
        target = Target(url, request.param, log, fake, ledger, firestore_client)
        status, answer = target.post(VALID, {"Idempotency-Key": f"warm-up-{uuid.uuid4().hex[:8]}"})
        assert status == 200, answer
        assert answer["status"] == "placed", answer
        yield target
        target.close()


def _function_logs() -> list[Path]:
    import os

    return sorted(Path(os.environ.get("TMPDIR", "/tmp")).glob("function-execute-*.log"))


# --- the corpus ---------------------------------------------------------------------------------

NUMBER_TEXTS = [
    "12345678901234567890123456789012345678901234567890",  # 50 digits: refused, never 1.2e49
    "1.0000000000000000000000000000000000001",
    "1E+100000000",
    "1e-400",
    "1E+999999999999999999999999999999",
    "-1",
    "0",
    "-0.0",
    "1e20",
    "1e21",
    "0.000000001",
    "0.0000000001",
    "123456789012345678",
    "3.00000000000000000001",
    "NaN",
    "-Infinity",
    "Infinity",
    "1" + "0" * 5000,
    "0." + "0" * 5000 + "1",
]
NUMBER_STRINGS = ["1E+100000000", "1e-400", "NaN", "inf", "-inf", "0x10", "1_000", " 1 ", "", "1,5", "１"]

BAD_METADATA: list[Any] = [
    False, 0, "", [], "x", 1, Raw("1e-400"), [{}],
    {"__name__": 1}, {"a.b": 1}, {"": 1}, {"é": 1}, {"a" * 65: 1},
    {"a": {"b": {"c": {"d": {"e": 1}}}}}, {"a": [[1]]}, {"a": "x" * 1025},
    {f"k{i}": i for i in range(65)}, {"a": Raw("0.1000000000000000055511151231257827")},
    {"a": Raw("1E+100000000")}, {"a": 2**64}, {"a": Raw("NaN")},
    {"a": "\ud800"}, {"\udc00": 1}, {"a": ["x", "\udbff"]},
    {"tenant_id": "other_corp"}, {"uid": "someone_else"}, {"tenant_id": ["acme_corp"]}, {"uid": {"x": 1}},
]  # fmt: skip


def body_corpus() -> list[tuple[str, bytes]]:
    """(name, raw body): every field wrong in every way, and malformed JSON."""
    cases: list[tuple[str, bytes]] = []

    def add(name: str, value: Any) -> None:
        cases.append(
            (name, value if isinstance(value, bytes) else encode(value).encode("utf-8", "surrogatepass"))
        )

    wrong_values: list[Any] = [
        None, True, False, 0, -1, Raw("1.5"), "", " ", "x" * 201, "x" * 5000, [], {}, ["AAPL"], {"a": 1},
        "\u0000", "\u202e", "AAPL\n", "😀" * 60, Raw('"\\ud800"'), "../../etc", "a/b",
    ]  # fmt: skip
    for name in (
        "strategy_id",
        "broker_account_id",
        "symbol",
        "side",
        "qty",
        "asset_class",
        "estimated_slippage",
    ):
        for index, value in enumerate(wrong_values):
            add(f"{name}={index}", {**VALID, name: value})
        add(f"missing {name}", {key: item for key, item in VALID.items() if key != name})
    for text in NUMBER_TEXTS:
        add(f"qty {text[:20]}", {**VALID, "qty": Raw(text)})
        add(f"slippage {text[:20]}", {**VALID, "estimated_slippage": Raw(text)})
    for text in NUMBER_STRINGS:
        add(f"qty '{text}'", {**VALID, "qty": text})
    for index, metadata in enumerate(BAD_METADATA):
        add(f"metadata {index}", {**VALID, "metadata": metadata})
    for symbol, asset_class in (
        ("BTC/USD", "EQUITY"), ("AAPL", "OPTIONS"), ("EUR/USD", "CRYPTO"), ("AAPL240119C00150000", "EQUITY"),
        ("BTCUSD", "FOREX"), ("AAPL", "BOND"), ("AAPL", "equity "),
    ):  # fmt: skip
        add(f"{symbol} as {asset_class}", {**VALID, "symbol": symbol, "asset_class": asset_class})
    for extra in ("tenant_id", "uid", "unknown_field", "__proto__"):
        add(f"top-level {extra}", {**VALID, extra: "other"})
    add("option qty fraction", {**VALID, "symbol": "AAPL240119C00150000", "qty": Raw("1.5")})
    add("equity qty below step", {**VALID, "qty": Raw("0.0000000001")})
    add("equity qty above max", {**VALID, "qty": 10_000_001})
    add("duplicate qty", Pairs([*VALID.items(), ("qty", 1000)]))
    add("duplicate metadata key", {**VALID, "metadata": Pairs([("a", 1), ("a", 2)])})
    add("deep array", b'{"qty": 1, "metadata": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}")
    add("deep object", b'{"metadata": ' + b'{"a":' * 300 + b"1" + b"}" * 300 + b"}")
    add("unclosed deep", b"[" * 16_000)
    add("unterminated escapes", b'"' + b'\\"' * 8000)
    add("many values", b'{"metadata": {"a": [' + b",".join([b"0"] * 3000) + b"]}}")
    add("long string", encode({**VALID, "metadata": {"note": "x" * 15_000}}).encode())
    add("over 16 KiB", encode({**VALID, "metadata": {"note": "x" * 17_000}}).encode())
    add("invalid utf-8", b'{"symbol": "\xff\xfe", "qty": 1}')
    add("overlong utf-8", b'{"symbol": "\xc0\xaf"}')
    add("utf-16", encode(VALID).encode("utf-16"))
    add("bom", b"\xef\xbb\xbf" + encode(VALID).encode())
    add(
        "lone surrogate",
        b'{"strategy_id": "\\udc00", "broker_account_id": "a", "symbol": "AAPL", "side": "buy", "qty": 1}',
    )
    add("control char", b'{"strategy_id": "a\x01b"}')
    add("nul", b"\x00")
    add("empty", b"")
    add("whitespace", b" \n\t ")
    add("array", b"[1, 2, 3]")
    add("string", b'"AAPL"')
    add("number", b"1")
    add("null", b"null")
    add("single quotes", b"{'qty': 1}")
    add("trailing comma", b'{"qty": 1,}')
    add("comment", b'{"qty": 1 /* x */}')
    add("trailing garbage", encode(VALID).encode() + b" x")
    whole = encode(VALID).encode()
    for cut in range(1, len(whole), 7):
        add(f"truncated at {cut}", whole[:cut])
    return cases


def token_corpus() -> list[tuple[str, str | None]]:
    """(name, Authorization header): missing, malformed, expired, foreign, wrong role, forged."""
    payload = json.loads(base64.urlsafe_b64decode(token().split(".")[1] + "=="))
    return [
        ("none", None),
        ("empty", ""),
        ("bearer only", "Bearer"),
        ("bearer space", "Bearer "),
        ("lowercase", f"bearer {token()}"),
        ("basic", "Basic dXNlcjpwYXNz"),
        ("garbage", "Bearer not-a-jwt"),
        ("three dots", "Bearer a.b.c"),
        ("expired", f"Bearer {unsigned_token(TRADER, expires_in_s=-60)}"),
        ("other project", f"Bearer {unsigned_token(TRADER, project='someone-else')}"),
        ("viewer", f"Bearer {token(role='viewer')}"),
        ("no role", f"Bearer {forged({k: v for k, v in payload.items() if k != 'role'})}"),
        ("no tenant", f"Bearer {forged({k: v for k, v in payload.items() if k != 'tenant_id'})}"),
        ("empty tenant", f"Bearer {token(tenant_id='')}"),
        ("role ADMIN", f"Bearer {token(role='ADMIN')}"),
        ("no subject", f"Bearer {forged({k: v for k, v in payload.items() if k not in ('sub', 'user_id')})}"),
        ("not base64", "Bearer @@@.@@@.@@@"),
        ("huge", "Bearer " + "a" * 4000),
    ]


HEADER_CORPUS: list[dict[str, str | bytes]] = [
    {"Content-Type": "text/plain"},
    {"Content-Type": "application/x-www-form-urlencoded"},
    {"Content-Type": "multipart/form-data; boundary=x"},
    {"Content-Type": "application/json; charset=utf-16"},
    {"Content-Type": ""},
    {"Idempotency-Key": ""},
    {"Idempotency-Key": " "},
    {"Idempotency-Key": "k" * 201},
    {"Idempotency-Key": "k" * 3000},
    {"Idempotency-Key": "run:acme_corp:strategy:run:AAPL"},
    {"Idempotency-Key": "api:x"},
    {"Idempotency-Key": "é".encode("latin-1")},
    {"Idempotency-Key": "\U0001f600".encode()},
    {"Idempotency-Key": "a\tb"},
    {"Content-Encoding": "gzip"},
    {"Expect": "100-continue"},
]


def test_execute_holds_under_fuzzing(target: Target) -> None:
    started = time.monotonic()
    bodies, tokens = body_corpus(), token_corpus()

    # Every body with a valid token; every token on a valid body; every header on a valid body.
    for _name, raw in bodies:
        status, answer = target.post(raw, {"Idempotency-Key": f"c-{uuid.uuid4().hex[:12]}"})
        if status == 200:
            assert_exact_qty(raw, answer)
    for _name, header in tokens:
        headers: dict[str, str | bytes] = {"Content-Type": "application/json"}
        if header is not None:
            headers["Authorization"] = header
        status, _ = target.send(encode(VALID), headers)
        assert status in (401, 403), (_name, status)
    for headers in HEADER_CORPUS:
        target.post(encode(VALID), headers)
    for method in ("GET", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"):
        status, _ = target.send(encode(VALID), {"Authorization": f"Bearer {token()}"}, method=method)
        assert status == 405

    # The numbers the issue measured: refused, never rounded, never expanded.
    for text in ("12345678901234567890123456789012345678901234567890", "1E+100000000", "1e-400"):
        for qty in (Raw(text), text):
            status, answer = target.post({**VALID, "qty": qty})
            assert status == 422, (text, answer)
    for metadata in (False, 0, "", []):
        status, answer = target.post({**VALID, "metadata": metadata})
        assert (status, answer["error"]) == (422, "invalid_intent")
    status, answer = target.post({**VALID, "metadata": {"tenant_id": "other_corp"}})
    assert status == 403
    status, answer = target.post({**VALID, "symbol": "BTC/USD", "asset_class": "EQUITY"})
    assert status == 422

    generated(target)

    # Healthy afterwards: a valid request places its order, exactly as sent (another tenant: the
    # fuzzed requests that were valid have used this one's daily trades and position limit).
    key = f"after-{uuid.uuid4().hex[:8]}"
    status, answer = target.post(
        {**VALID, "symbol": "BTC/USD", "qty": Raw("0.123456789")}, {"Idempotency-Key": key}, tenant_id="after"
    )
    assert status == 200, answer
    assert answer["status"] == "placed", answer["reason"]
    assert Decimal(answer["intent"]["qty"]) == Decimal("0.123456789")
    assert "Traceback" not in target.log.read_text(errors="replace")

    target.tally.seconds = time.monotonic() - started
    print(
        f"\nfuzz ({target.store}): {target.tally.requests} requests in {target.tally.seconds:.1f} s, "
        f"statuses {dict(sorted(target.tally.by_status.items()))}"
    )
    assert target.tally.requests >= REQUESTS_BY_STORE[target.store]


# --- generated intents ----------------------------------------------------------------------------

# Each field draws from a pool of ready values (one draw per field keeps an example near a
# millisecond, so the run reaches its 10,000 requests in bounded time), with a share of freshly
# generated text and numbers.
_ODD_STRINGS = [
    "", " ", "\t", "x" * 201, "x" * 3000, "\u0000", "a\u0000b", "\u202eRTL", "😀" * 60, "日本語", "../..",
    "a/b", "a~b", "%2F", "__name__", "null", "true", "1", "1e400", "NaN", "<script>", "'; DROP TABLE x; --",
    "\\", "\ud800", "a\udfffb",
]  # fmt: skip
_ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 2**63, -(2**64), Raw("1.5"), Raw("-0"), Raw("1e-5"), [], {}, [1, "a"],
    {"a": None}, [[[]]], {"a": {"b": {"c": {}}}}, [Raw("1E+100000000")], {"qty": 1}, *NUMBER_STRINGS,
]  # fmt: skip
_NUMBER_POOL = [Raw(text) for text in NUMBER_TEXTS] + [
    Raw(text) for text in ("1", "2", "0.5", "0.1", "3.000", "1e2", "1E-9", "100", "10000001", "0.123456789")
]
_POOLS: dict[str, list[Any]] = {
    "strategy_id": ["fuzz", "other", *_ODD_STRINGS, *_ODD_VALUES],
    "broker_account_id": ["alpaca_main", "paper", *_ODD_STRINGS, *_ODD_VALUES],
    "symbol": [
        "AAPL",
        "BTC/USD",
        "btcusd",
        "BTC-USD",
        "ETH/USDT",
        "EUR/USD",
        "EURUSD",
        "AAPL240119C00150000",
        "SPY   251219P00450000",
        "AAPL991332C00150000",
        "BRK.B",
        "BRK-B",
        "ZZZZZZ",
        "X" * 65,
        *_ODD_STRINGS,
        *_ODD_VALUES,
    ],
    "side": ["buy", "sell", "BUY", " Sell ", "hold", "short", *_ODD_STRINGS, *_ODD_VALUES],
    "qty": [*_NUMBER_POOL, *_NUMBER_POOL, *NUMBER_STRINGS, *_ODD_VALUES],
    "asset_class": ["EQUITY", "CRYPTO", "FOREX", "OPTIONS", "crypto", "BOND", *_ODD_STRINGS, *_ODD_VALUES],
    "estimated_slippage": [*_NUMBER_POOL, Raw("0.0001"), Raw("1.0000001"), *NUMBER_STRINGS, *_ODD_VALUES],
    "metadata": [{}, {"note": "x"}, {"run_id": "r1", "score": Raw("0.25")}, *BAD_METADATA, *_ODD_VALUES],
    "idempotency_key": ["k1", "api:k1", "run:acme_corp:s:r:AAPL", *_ODD_STRINGS, *_ODD_VALUES],
}
_FRESH: dict[str, st.SearchStrategy[Any]] = {
    "qty": st.one_of(
        st.integers(min_value=-(10**25), max_value=10**25).map(lambda n: Raw(str(n))),
        st.floats(allow_nan=False, allow_infinity=False).map(lambda f: Raw(repr(f))),
    ),
    "metadata": st.dictionaries(
        st.sampled_from(["a", "note", "score", "_x", "a.b", "tenant_id", "uid", "A-1"]),
        st.sampled_from([*_ODD_STRINGS, *_ODD_VALUES, *_NUMBER_POOL]),
        max_size=4,
    ),
}
_MISSING, _VALID = object(), object()
# Strategies built once: a strategy made inside the draw is labelled anew every time (slow).
_CHOICES = {
    name: st.sampled_from(
        [_VALID] * (2 if name in VALID else 0) + [_MISSING] * (1 if name in VALID else 3) + ["pool", "fresh"]
    )
    for name in _POOLS
}
_POOL_VALUES = {name: st.sampled_from(pool) for name, pool in _POOLS.items()}
_SHAPES = st.integers(0, 31)
_DUPLICATES = st.sampled_from(["qty", "side", "tenant_id", "uid", "extra"])


@st.composite
def intent_bodies(draw: st.DrawFn) -> bytes:
    """A valid intent with some fields bent, dropped, doubled or added; sometimes cut short."""
    pairs = Pairs()
    for name in _POOLS:
        choice = draw(_CHOICES[name])
        if choice is _VALID:
            pairs.append((name, VALID[name]))
        elif choice == "fresh" and name in _FRESH:
            pairs.append((name, draw(_FRESH[name])))
        elif choice is not _MISSING:
            pairs.append((name, draw(_POOL_VALUES[name])))
    shape = draw(_SHAPES)
    if shape == 0:
        pairs.append((draw(_DUPLICATES), "dup"))
    body = encode(pairs).encode("utf-8", "surrogatepass")
    if shape == 1:
        body = body[: draw(st.integers(0, len(body)))]
    return body


def mutations(body: bytes, rng: random.Random, count: int) -> list[bytes]:
    """``count`` relatives of ``body``: a field swapped for a pool value, or bytes cut, repeated,
    flipped or inserted. Drawn from ``rng`` (seeded by hypothesis: a failure names its seed and
    its body), far cheaper per request than a drawn example."""
    try:
        pairs = Pairs(json.loads(body, object_pairs_hook=list))
    except (ValueError, TypeError):
        pairs = Pairs(VALID.items())
    result = []
    for _ in range(count):
        if rng.random() < 0.6 and isinstance(pairs, list):
            name = rng.choice(list(_POOLS))
            bent = Pairs([(key, value) for key, value in pairs if key != name])
            bent.append((name, rng.choice(_POOLS[name])))
            result.append(encode(bent).encode("utf-8", "surrogatepass"))
            continue
        data = bytearray(body)
        position = rng.randrange(len(data) + 1)
        kind = rng.randrange(4)
        if kind == 0:
            del data[position:]
        elif kind == 1:
            data[position:position] = data[max(0, position - 8) : position] * rng.randrange(1, 50)
        elif kind == 2 and data:
            data[min(position, len(data) - 1)] = rng.randrange(256)
        else:
            data[position:position] = rng.choice(
                [b"[", b"{", b'"', b"\\", b"\xff", b"\x00", b",", b"1e999999"]
            )
        result.append(bytes(data))
    return result


MUTATIONS_PER_EXAMPLE = 3


def generated(target: Target) -> None:
    remaining = max(REQUESTS_BY_STORE[target.store] - target.tally.requests, 0)
    examples = remaining // (1 + MUTATIONS_PER_EXAMPLE) + 50

    @given(intent_bodies(), st.integers(0, 2**32))
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def one(body: bytes, seed: int) -> None:
        for sent in (body, *mutations(body, random.Random(seed), MUTATIONS_PER_EXAMPLE)):
            status, answer = target.post(sent)
            if status == 200:
                assert_exact_qty(sent, answer)

    one()


def assert_exact_qty(body: bytes, answer: dict[str, Any]) -> None:
    """An accepted qty is the qty sent, exactly: never rounded through a float."""
    qty = json.loads(body, parse_float=Decimal, parse_int=Decimal)["qty"]
    assert Decimal(answer["intent"]["qty"]) == Decimal(str(qty).strip()), (body, answer)


def test_the_store_counts_commits_of_another_connection(target: Target) -> None:
    """The write check can fail: a valid new intent is one or more commits."""
    before = target.commits()
    status, _ = target.post({**VALID, "qty": 2}, {"Idempotency-Key": f"w-{uuid.uuid4().hex[:8]}"})
    assert status == 200
    assert target.commits() > before
