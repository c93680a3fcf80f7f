"""The wire: request bodies parsed with exact numbers and bounded shape, metadata that every store
keeps as it was sent, and bodies read within a deadline by the served ``execute`` function."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from backend.core.intents import OrderIntent
from devtools.alpaca_simulator import FakeAlpaca, running
from devtools.tokens import unsigned_token
from functions.wire import MAX_JSON_DEPTH, MAX_JSON_VALUES, WireError, parse_json_object
from tests.test_http_execute import INTENT, TRADER, served

BASE = {"strategy_id": "s", "broker_account_id": "paper", "symbol": "AAPL", "side": "buy"}


def parsed(text: str | bytes) -> dict[str, Any]:
    return parse_json_object(text.encode() if isinstance(text, str) else text, "an OrderIntent")


def refusal(text: str | bytes) -> WireError:
    with pytest.raises(WireError) as caught:
        parsed(text)
    return caught.value


class TestExactJson:
    def test_numbers_never_pass_through_a_float(self) -> None:
        body = parsed('{"qty": 0.1, "n": 3, "big": 123456789012345.678, "e": 1.5e3}')
        assert body == {
            "qty": Decimal("0.1"),
            "n": 3,
            "big": Decimal("123456789012345.678"),
            "e": Decimal("1.5e3"),
        }
        assert isinstance(body["n"], int)

    def test_a_fifty_digit_number_is_refused_never_rounded(self) -> None:
        error = refusal('{"qty": 12345678901234567890123456789012345678901234567890}')
        assert (error.status, error.error) == (422, "invalid_body")
        assert "longer than 40 characters" in error.reason

    def test_a_long_number_is_refused_before_it_is_converted(self) -> None:
        assert refusal('{"qty": 1' + "0" * 10_000 + "}").status == 422  # int() would refuse 4300+ digits
        assert refusal('{"qty": 0.' + "0" * 10_000 + "1}").status == 422

    @pytest.mark.parametrize("qty", ["1E+100000000", "1e-400", "1E+999999999999999999"])
    def test_huge_exponents_stay_unexpanded_and_the_qty_field_refuses_them(self, qty: str) -> None:
        for body in (f'{{"qty": {qty}}}', f'{{"qty": "{qty}"}}'):
            value = parsed(body)["qty"]
            with pytest.raises(ValidationError, match="qty is out of range"):
                OrderIntent.model_validate({**BASE, "qty": value})

    def test_a_qty_with_more_digits_than_kept_is_refused_not_rounded(self) -> None:
        value = parsed('{"qty": 1.0000000000000000000001}')["qty"]
        with pytest.raises(ValidationError, match="more than 15 significant digits"):
            OrderIntent.model_validate({**BASE, "qty": value})
        exact = parsed('{"qty": 123456.123456789}')["qty"]
        assert OrderIntent.model_validate({**BASE, "qty": exact}).qty == Decimal("123456.123456789")

    @pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
    def test_nan_and_infinity_are_not_json(self, constant: str) -> None:
        error = refusal(f'{{"qty": {constant}}}')
        assert (error.status, error.reason) == (400, f"{constant} is not a JSON number")

    def test_a_duplicate_key_is_refused(self) -> None:
        error = refusal('{"qty": 1, "side": "buy", "qty": 1000}')
        assert (error.status, error.reason) == (400, "the key 'qty' appears twice in one object")
        assert refusal('{"metadata": {"a": 1, "a": 1}}').status == 400

    def test_nesting_and_value_count_are_bounded_before_parsing(self) -> None:
        assert refusal("[" * 20_000).status == 422  # the recursive parser never sees it
        ok = '{"a":' * (MAX_JSON_DEPTH - 1) + "1" + "}" * (MAX_JSON_DEPTH - 1)
        assert parsed(ok)
        deep = '{"a":' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1)
        assert "nested deeper than 16" in refusal(deep).reason
        many = '{"a": [' + ",".join(["0"] * MAX_JSON_VALUES) + "]}"
        assert "more than 1024 values" in refusal(many).reason
        brackets_in_strings = {"note": "[[[[{{{{" * 100 + '\\"]]', "list": ",,,," * 500}
        assert parsed(json.dumps(brackets_in_strings)) == brackets_in_strings

    @pytest.mark.parametrize(
        ("raw", "reason"),
        [
            (b'{"a": "\\ud800"}', "lone surrogate"),
            (b"\xff\xfe{}", "not UTF-8"),
            (b'{"a": "\xc3"}', "not UTF-8"),
            (b'\xef\xbb\xbf{"a": 1}', "not valid JSON"),
            (b'{"qty": 1', "not valid JSON"),
            (b'"' + b'\\"' * 8000, "not valid JSON"),  # unterminated: the shape scan stays linear
            (b"", "not valid JSON"),
            (b'{"a": 1} x', "not valid JSON"),
            (b"[1, 2]", "must be a JSON object (an OrderIntent)"),
            (b"null", "must be a JSON object"),
        ],
    )
    def test_malformed_bodies_are_400_with_a_reason(self, raw: bytes, reason: str) -> None:
        error = refusal(raw)
        assert error.status == 400
        assert reason in error.reason

    def test_unicode_survives(self) -> None:
        assert parsed('{"note": "\\ud83d\\ude00 caf\\u00e9 \u65e5\u672c"}') == {"note": "😀 café 日本"}

    @given(st.decimals(allow_nan=False, allow_infinity=False, places=None))
    @settings(max_examples=300)
    def test_any_short_number_is_parsed_as_exactly_that_number(self, number: Decimal) -> None:
        text = str(number)
        if len(text) > 40:
            assert refusal(f'{{"n": {text}}}').status == 422
        else:
            value = parsed(f'{{"n": {text}}}')["n"]
            assert Decimal(value) == number
            assert not isinstance(value, float)


def intent_metadata(metadata: Any) -> dict[str, Any]:
    return OrderIntent.model_validate({**BASE, "qty": 1, "metadata": metadata}).metadata


class TestMetadata:
    def test_decimals_become_the_double_that_holds_them_exactly(self) -> None:
        metadata = parsed('{"score": 0.1, "n": 7, "list": [1.50, 2e3], "neg": -0.0}')
        assert intent_metadata(metadata) == {"score": 0.1, "n": 7, "list": [1.5, 2000.0], "neg": -0.0}

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ("0.1000000000000000055511151231257827", "cannot be stored exactly"),
            ("12345678901234567891", "cannot be stored exactly"),
            ("1e-400", "out of range"),
            ("1E+100000000", "out of range"),
            ("1e400", "out of range"),
        ],
    )
    def test_a_number_no_store_keeps_exactly_is_refused(self, text: str, reason: str) -> None:
        number = parsed(f'{{"x": {text}.0}}' if text.isdigit() else f'{{"x": {text}}}')["x"]
        with pytest.raises(ValidationError, match=reason):
            intent_metadata({"x": number})

    @pytest.mark.parametrize(
        ("metadata", "reason"),
        [
            ({"__name__": 1}, "must match"),
            ({"a.b": 1}, "must match"),
            ({"": 1}, "must match"),
            ({"a": 2**63}, "64-bit"),
            ({"a": "x" * 1025}, "longer than 1024"),
            ({"a": [[1]]}, "list inside a list"),
            ({"a": {"b": {"c": {"d": {"e": 1}}}}}, "nested deeper than 4"),
            ({f"k{i}": i for i in range(65)}, "more than 64 keys"),
            ({"a": ["x" * 1000] * 5}, "more than 4096"),
        ],
    )
    def test_metadata_that_cannot_be_stored_is_refused(self, metadata: Any, reason: str) -> None:
        with pytest.raises(ValidationError, match=reason):
            intent_metadata(metadata)


_KEYS = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_-]{0,10}\Z")
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: Decimal(repr(f))),
    st.decimals(allow_nan=False, allow_infinity=False, places=None),
    st.text(max_size=20),
)
_METADATA = st.dictionaries(
    _KEYS,
    st.recursive(
        _LEAVES,
        lambda inner: st.lists(_LEAVES, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
        max_leaves=8,
    ),
    max_size=5,
)


@given(_METADATA)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_accepted_metadata_reads_back_identically_from_each_store(
    firestore_client: Any, metadata: dict[str, Any]
) -> None:
    """What the boundary accepts, Firestore and the embedded store's JSON write and read back as it
    was: the same values and the same types."""
    try:
        accepted = intent_metadata(metadata)
    except ValidationError:
        return
    document = firestore_client.collection("wire_roundtrip").document("m")
    document.set({"metadata": accepted})
    from_firestore = document.get().to_dict()["metadata"]
    from_json = orjson.loads(orjson.dumps(accepted))
    for read in (from_firestore, from_json):
        assert read == accepted
        assert _types(read) == _types(accepted)


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _types(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_types(item) for item in value]
    return type(value).__name__


# --- the body read deadline, against the served function over a raw socket -----------------------

READ_SECONDS = "1"


@pytest.fixture(scope="module")
def wire_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    fake = FakeAlpaca()
    fake.set_quote("AAPL", "189.99", "190.01")
    ledger = tmp_path_factory.mktemp("wire") / "ledger.sqlite3"
    with (
        running(fake) as alpaca_url,
        served(
            "execute",
            alpaca_url,
            {"EXEC_STORE": "sqlite", "EXEC_SQLITE_PATH": str(ledger), "EXEC_BODY_READ_SECONDS": READ_SECONDS},
        ) as url,
    ):
        yield url


def raw_exchange(
    url: str, head: str, body_parts: list[bytes], pause: float = 0.0
) -> tuple[int, dict[str, Any]]:
    """Send ``head`` and the ``body_parts`` (``pause`` seconds apart) without closing, then read the
    answer. The socket's 30 s timeout is the test's guard against a hang, not a measured figure."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        for part in body_parts:
            if pause:
                time.sleep(pause)
            try:
                sock.sendall(part)
            except OSError:
                break  # the server answered and stopped reading: the answer is waiting
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        head_text, _, rest = answer.partition(b"\r\n\r\n")
        status = int(head_text.split()[1])
        length = next(
            int(line.split(b":")[1])
            for line in head_text.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return status, json.loads(rest)


def request_head(content_length: int, token: bool = True) -> str:
    auth = f"Authorization: Bearer {unsigned_token(TRADER)}\r\n" if token else ""
    return (
        f"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {content_length}\r\n\r\n"
    )


class TestBodyDeadline:
    def test_a_declared_body_over_the_limit_is_413_without_reading_it(self, wire_url: str) -> None:
        status, body = raw_exchange(wire_url, request_head(16_385), [b'{"qty": 1}'])
        assert status == 413
        assert body["error"] == "payload_too_large"
        assert "Content-Length 16385" in body["reason"]

    def test_a_body_shorter_than_declared_is_408_not_a_held_worker(self, wire_url: str) -> None:
        status, body = raw_exchange(wire_url, request_head(100), [b'{"qty": 1}'])
        assert status == 408
        assert body == {
            "error": "request_timeout",
            "reason": f"the body did not arrive within {READ_SECONDS} s",
        }

    def test_a_slow_loris_body_is_cut_at_the_total_deadline(self, wire_url: str) -> None:
        payload = json.dumps(INTENT).encode()
        parts = [payload[i : i + 1] for i in range(len(payload))]  # a byte every 0.2 s: ~16 s in all
        status, body = raw_exchange(wire_url, request_head(len(payload)), parts, pause=0.2)
        assert status == 408
        assert body["error"] == "request_timeout"

    def test_a_chunked_body_that_never_ends_is_408(self, wire_url: str) -> None:
        head = request_head(0).replace("Content-Length: 0", "Transfer-Encoding: chunked")
        status, body = raw_exchange(wire_url, head, [b'6\r\n{"qty"\r\n'])
        assert status == 408
        assert body["error"] == "request_timeout"

    def test_a_body_in_pieces_within_the_deadline_is_read_whole(self, wire_url: str) -> None:
        payload = json.dumps({**INTENT, "qty": 2, "idempotency_key": "pieces"}).encode()
        half = len(payload) // 2
        status, body = raw_exchange(
            wire_url, request_head(len(payload)), [payload[:half], payload[half:]], 0.3
        )
        assert status == 200, body
        assert body["intent"]["qty"] == "2"

    def test_a_refusal_before_the_body_is_read_does_not_wait_for_it(self, wire_url: str) -> None:
        status, body = raw_exchange(wire_url, request_head(100, token=False), [b"{"])
        assert status == 401
        assert body["error"] == "unauthenticated"

    def test_the_function_still_serves_afterwards(self, wire_url: str) -> None:
        payload = json.dumps({**INTENT, "qty": 1}).encode()
        status, body = raw_exchange(wire_url, request_head(len(payload)), [payload])
        assert status == 200, body
        assert body["status"] == "placed"


_FLOAT_TEXTS = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300).map(repr)


@given(
    qty=st.decimals(min_value=Decimal("0.000000001"), max_value=Decimal(1000), places=9).map(str),
    score=_FLOAT_TEXTS,
    count=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
@settings(max_examples=300)
def test_exact_parsing_keeps_the_content_key_of_every_body_a_float_parser_accepted(
    qty: str, score: str, count: int
) -> None:
    """An intent without a key is identified by a digest of its content: parsing exactly must not
    change it for any body that was accepted before (else a retry in flight would be a new order)."""
    raw = f'{{"qty": {qty}, "metadata": {{"score": {score}, "count": {count}}}}}'.encode()
    before = OrderIntent.model_validate({**BASE, **orjson.loads(raw)})
    after = OrderIntent.model_validate({**BASE, **parsed(raw)})
    assert after.resolved_idempotency_key() == before.resolved_idempotency_key()
    assert after.qty == before.qty
    assert after.metadata == before.metadata
