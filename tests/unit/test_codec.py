"""The AMQP codec at the byte level: field tables, method arguments, content properties, frames.

Round trips with hypothesis, hand-written byte fixtures for every field type tag RabbitMQ's clients send,
malformed input (which must raise CodecError and nothing else) and a cross-check against pamqp, an
independent implementation (the one aio-pika uses).
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import math
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import body as pamqp_body
from pamqp import commands as pc
from pamqp import decode as pamqp_decode
from pamqp import encode as pamqp_encode
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header

from leveret.amqp import codec, spec
from leveret.amqp.codec import CodecError

UTC = datetime.UTC

# --- strategies ------------------------------------------------------------------------------------

# Short strings: at most 255 bytes of UTF-8 (63 characters of up to 4 bytes, or long ASCII ones).
shortstrs = st.one_of(
    st.text(max_size=63),
    st.text(alphabet=st.characters(max_codepoint=127), min_size=200, max_size=255),
)
longstrs = st.binary(max_size=300)
field_keys = st.text(max_size=40)

int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)
decimals = st.builds(lambda unscaled, scale: decimal.Decimal(unscaled).scaleb(-scale),
                     st.integers(min_value=-(2**31), max_value=2**31 - 1), st.integers(min_value=0, max_value=255))
whole_second_datetimes = st.datetimes(
    min_value=datetime.datetime(1970, 1, 1), max_value=datetime.datetime(9999, 12, 31), timezones=st.just(UTC)
).map(lambda d: d.replace(microsecond=0))

scalar_values = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    int64s,
    st.floats(allow_nan=False),
    decimals,
    st.text(max_size=50),
    st.binary(max_size=50),
    st.none(),
    whole_second_datetimes,
)
field_values = st.recursive(
    scalar_values,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(field_keys, children, max_size=5)),
    max_leaves=20,
)
field_tables = st.dictionaries(field_keys, field_values, max_size=8)

ARGUMENT_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    spec.BIT: st.booleans(),
    spec.OCTET: st.integers(min_value=0, max_value=2**8 - 1),
    spec.SHORT: st.integers(min_value=0, max_value=2**16 - 1),
    spec.LONG: st.integers(min_value=0, max_value=2**32 - 1),
    spec.LONGLONG: st.integers(min_value=0, max_value=2**64 - 1),
    spec.SHORTSTR: shortstrs,
    spec.LONGSTR: longstrs,
    spec.TABLE: field_tables,
    spec.TIMESTAMP: st.integers(min_value=0, max_value=2**64 - 1),
}


def arguments_of(method: spec.MethodSpec) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.tuples(*(ARGUMENT_STRATEGIES[kind] for _name, kind in method.arguments))


properties = st.fixed_dictionaries(
    {}, optional={name: ARGUMENT_STRATEGIES[kind] for name, kind in spec.BASIC_PROPERTIES}
)


def assert_same(left: Any, right: Any) -> None:
    """Equal and of the same types all the way down (True is not 1, b"a" is not "a"); a large int comes back
    as a LongInt (an int that remembers it was a 64-bit field)."""
    assert type(left) is type(right) or {type(left), type(right)} == {int, codec.LongInt}, (left, right)
    if isinstance(left, dict):
        assert list(left) == list(right)
        for key in left:
            assert_same(left[key], right[key])
    elif isinstance(left, list):
        assert len(left) == len(right)
        for a, b in zip(left, right, strict=True):
            assert_same(a, b)
    elif isinstance(left, float) and math.isnan(left):
        assert math.isnan(right)
    else:
        assert left == right


def table_bytes(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


# --- field tables ----------------------------------------------------------------------------------


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(field_tables)
def test_table_round_trip(table: dict[str, Any]) -> None:
    raw = codec.encode_table(table)
    decoded, offset = codec.decode_table(raw, 0)
    assert offset == len(raw)
    assert_same(decoded, table)


@settings(max_examples=200)
@given(field_values, st.binary(max_size=8), st.binary(max_size=8))
def test_field_value_round_trip_at_an_offset(value: Any, before: bytes, after: bytes) -> None:
    raw = codec.encode_field_value(value)
    decoded, offset = codec.decode_field_value(before + raw + after, len(before))
    assert offset == len(before) + len(raw)
    assert_same(decoded, value)


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        (True, b"t"), (False, b"t"), (0, b"I"), (-(2**31), b"I"), (2**31 - 1, b"I"), (2**31, b"l"),
        (-(2**31) - 1, b"l"), (2**63 - 1, b"l"), (-(2**63), b"l"), (1.5, b"d"), (decimal.Decimal("1.5"), b"D"),
        ("é", b"S"), (b"\x00", b"x"), (None, b"V"), (datetime.datetime(2020, 1, 1, tzinfo=UTC), b"T"),
        ({}, b"F"), ([], b"A"),
    ],
)
def test_encoder_picks_the_tag_rabbitmq_expects(value: Any, tag: bytes) -> None:
    assert codec.encode_field_value(value)[:1] == tag


# One or more byte fixtures per field type tag, as RabbitMQ's clients send them.
TAG_FIXTURES: list[tuple[bytes, Any]] = [
    (b"t\x01", True),
    (b"t\x00", False),
    (b"t\x02", True),  # any non-zero octet is true, as in RabbitMQ
    (b"b\xff", codec.Int8(-1)),  # the narrower widths come back typed, to be re-encoded as such
    (b"b\x7f", codec.Int8(127)),
    (b"B\xff", codec.UInt8(255)),
    (b"s\xff\xfe", codec.Int16(-2)),
    (b"u\xff\xfe", codec.UInt16(65534)),
    (b"I\xff\xff\xff\xfe", -2),  # I: signed 32 bit (RabbitMQ's errata)
    (b"i\xff\xff\xff\xfe", codec.UInt32(2**32 - 2)),  # i: unsigned 32 bit
    (b"l\xff\xff\xff\xff\xff\xff\xff\xfe", -2),
    (b"L\xff\xff\xff\xff\xff\xff\xff\xfe", codec.UInt64(2**64 - 2)),
    (b"f" + struct.pack(">f", 1.5), codec.Float32(1.5)),
    (b"d" + struct.pack(">d", -2.25), -2.25),
    (b"D\x02\x00\x00\x01\x3b", decimal.Decimal("3.15")),
    (b"D\x00\xff\xff\xff\xff", decimal.Decimal(-1)),
    (b"S\x00\x00\x00\x06h\xc3\xa9llo", "héllo"),
    (b"S\x00\x00\x00\x02\xff\xfe", codec.RawField(b"S", b"\x00\x00\x00\x02\xff\xfe")),  # not UTF-8: carried
    (b"S\x00\x00\x00\x00", ""),
    (b"x\x00\x00\x00\x03\x00\x01\x02", b"\x00\x01\x02"),
    (b"A\x00\x00\x00\x08I\x00\x00\x00\x01Vt\x01", [1, None, True]),
    (b"A\x00\x00\x00\x00", []),
    (b"T\x00\x00\x00\x00\x5e\x0b\xe1\x00", datetime.datetime(2020, 1, 1, tzinfo=UTC)),
    (b"T\x00\x00\x01\x8b\xcf\xe5\x68\x00", codec.RawField(b"T", b"\x00\x00\x01\x8b\xcf\xe5\x68\x00")),  # ms
    (b"F\x00\x00\x00\x07\x01kt\x01\x01jV", {"k": True, "j": None}),
    (b"F\x00\x00\x00\x00", {}),
    (b"V", None),
]


@pytest.mark.parametrize(("raw", "expected"), TAG_FIXTURES)
def test_decode_every_tag(raw: bytes, expected: Any) -> None:
    value, offset = codec.decode_field_value(raw + b"trailing", 0)
    assert offset == len(raw)
    assert_same(value, expected)


def test_every_tag_has_a_fixture() -> None:
    assert {raw[:1].decode() for raw, _ in TAG_FIXTURES} == set(spec.FIELD_TYPES) == set("tbBsuIilLfdDSxATFV")


def test_decode_a_table_as_a_java_client_sends_it() -> None:
    body = (b"\x0cx-max-length" + b"I\x00\x00\x00\x0a"
            + b"\x0ax-priority" + b"b\x05"
            + b"\x07x-ratio" + b"d" + struct.pack(">d", 0.5)
            + b"\x06nested" + b"F" + table_bytes(b"\x01ab\x01")
            + b"\x04list" + b"A\x00\x00\x00\x09S\x00\x00\x00\x01zu\x00\x07")
    table, offset = codec.decode_table(table_bytes(body), 0)
    assert offset == len(body) + 4
    assert table == {"x-max-length": 10, "x-priority": 5, "x-ratio": 0.5, "nested": {"a": 1}, "list": ["z", 7]}


def test_empty_and_none_tables_encode_as_four_zero_bytes() -> None:
    assert codec.encode_table({}) == b"\x00\x00\x00\x00"
    assert codec.encode_table(None) == b"\x00\x00\x00\x00"


def test_table_keys_are_kept_in_order() -> None:
    table = {"z": 1, "a": 2, "m": 3}
    assert list(codec.decode_table(codec.encode_table(table), 0)[0]) == ["z", "a", "m"]


@pytest.mark.parametrize(
    "value",
    [decimal.Decimal("1.50"), decimal.Decimal("-0.001"), decimal.Decimal("1E+5"), decimal.Decimal(2**31 - 1),
     decimal.Decimal("0E-300"), decimal.Decimal("12.300000000000")],
)
def test_decimal_round_trip_is_exact(value: decimal.Decimal) -> None:
    decoded, _ = codec.decode_field_value(codec.encode_field_value(value), 0)
    assert decoded == value


@pytest.mark.parametrize(
    "value",
    [
        2**64, -(2**63) - 1,  # no 64-bit tag holds them
        decimal.Decimal("NaN"), decimal.Decimal("Infinity"), decimal.Decimal(2**31),
        decimal.Decimal("1.00000000000000000000000000001"),  # 30 digits: must not be silently rounded
        datetime.datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC),  # before the epoch
        object(), {1, 2},
    ],
)
def test_values_a_table_cannot_hold_raise_codec_error(value: Any) -> None:
    with pytest.raises(CodecError):
        codec.encode_field_value(value)


def test_table_key_longer_than_a_short_string_is_refused() -> None:
    with pytest.raises(CodecError):
        codec.encode_table({"k" * 256: 1})
    assert codec.decode_table(codec.encode_table({"k" * 255: 1}), 0)[0] == {"k" * 255: 1}


def test_nested_tables_and_arrays_up_to_the_limit_decode() -> None:
    value: Any = 1
    for level in range(codec.MAX_NESTING):
        value = [value] if level % 2 else {"k": value}
    decoded, _ = codec.decode_field_value(codec.encode_field_value(value), 0)
    assert decoded == value


def _nested(tag: bytes, levels: int) -> bytes:
    raw = b"I\x00\x00\x00\x07"
    for _ in range(levels):
        raw = (b"F" + table_bytes(b"\x01k" + raw)) if tag == b"F" else (b"A" + table_bytes(raw))
    return raw


@pytest.mark.parametrize("tag", [b"F", b"A"])
@pytest.mark.parametrize("levels", [codec.MAX_NESTING + 1, 3000, 18000])
def test_nesting_deeper_than_the_limit_is_carried_raw_not_a_recursion_error(tag: bytes, levels: int) -> None:
    # RabbitMQ accepts 3,000 levels; 18,000 fit in a 128 KiB frame. Decoding never recurses; past MAX_NESTING
    # the rest is kept as its bytes (checked, not built), and encodes back to exactly those bytes.
    raw = _nested(tag, levels)
    value, offset = codec.decode_field_value(raw + b"V", 0)
    assert offset == len(raw)
    assert codec.encode_field_value(value) == raw
    for _ in range(codec.MAX_NESTING):
        value = value["k"] if tag == b"F" else value[0]
    assert isinstance(value, codec.RawField) and value.tag == tag
    assert codec.field_type(value) == ("table" if tag == b"F" else "array")
    table, _ = codec.decode_table(table_bytes(b"\x01k" + raw), 0)
    assert codec.encode_table(table) == table_bytes(b"\x01k" + raw)


def test_every_too_deep_sibling_is_carried_raw() -> None:
    # an array at the limit holding three tables nested past it: each is carried as its own RawField
    inner = _nested(b"F", 50)
    raw = b"A" + table_bytes(inner * 3)
    for _ in range(codec.MAX_NESTING - 1):
        raw = b"A" + table_bytes(raw)
    value, _ = codec.decode_field_value(raw, 0)
    for _ in range(codec.MAX_NESTING - 1):
        value = value[0]
    assert [type(item) for item in value] == [codec.RawField] * 3
    assert codec.encode_field_value(value) == b"A" + table_bytes(inner * 3)


@pytest.mark.parametrize("tag", [b"F", b"A"])
def test_malformed_contents_deep_inside_a_carried_table_are_still_refused(tag: bytes) -> None:
    raw = _nested(tag, 3000).replace(b"I\x00\x00\x00\x07", b"Z\x00\x00\x00\x07")  # an unknown tag at the bottom
    with pytest.raises(CodecError):
        codec.decode_field_value(raw, 0)


def test_field_values_keep_their_wire_types_through_decode_and_encode() -> None:
    # What dead-lettering does to the headers: decode, add a key, encode. Every value must come back as the
    # same bytes (RabbitMQ keeps types): narrow ints, unsigned ints, floats, non-UTF-8 strings, timestamps in
    # milliseconds, 2**64 - 1 as 'L', decimals.
    body = (b"\x01bb\xfe" + b"\x01BB\xfe" + b"\x01ss\xff\xfe" + b"\x01uu\xff\xfe" + b"\x01ii\xff\xff\xff\xfe"
            + b"\x01LL\xff\xff\xff\xff\xff\xff\xff\xff" + b"\x01ff" + struct.pack(">f", 0.1)
            + b"\x01SS\x00\x00\x00\x02\xc3\x28" + b"\x01TT\x00\x00\x01\x8b\xcf\xe5\x68\x00"
            + b"\x01tT\xff\xff\xff\xff\xff\xff\xff\xff" + b"\x01DD\x02\x00\x00\x01\x2c"
            + b"\x01ll\x00\x00\x00\x00\x00\x00\x00\x01")
    table, _ = codec.decode_table(table_bytes(body), 0)
    assert codec.encode_table(table) == table_bytes(body)
    table["x-new"] = 1
    assert codec.encode_table(table) == table_bytes(body + b"\x05x-newI\x00\x00\x00\x01")
    assert table["T"].plain == 1_700_000_000_000 and codec.field_type(table["T"]) == "timestamp"
    assert codec.field_type(table["S"]) == "longstr"
    assert table["b"] == -2 and table["u"] == 65534 and {table["i"]: 1}[2**32 - 2] == 1  # still ints


# --- method arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", spec.METHODS, ids=lambda m: m.full_name)
def test_method_round_trip(method: spec.MethodSpec) -> None:
    @settings(max_examples=10, suppress_health_check=[HealthCheck.too_slow], deadline=None)
    @given(arguments_of(method))
    def round_trip(args: tuple[Any, ...]) -> None:
        payload = codec.encode_method_payload(method, args)
        assert payload[:4] == struct.pack(">HH", method.class_id, method.method_id)
        decoded_method, decoded = codec.decode_method_payload(payload)
        assert decoded_method is method
        assert len(decoded) == len(args)
        for (_name, kind), sent, got in zip(method.arguments, args, decoded, strict=True):
            if kind == spec.BIT:
                assert got is bool(sent)
            else:
                assert_same(got, sent)

    round_trip()


def test_every_method_is_indexed_by_key_and_name() -> None:
    assert len(spec.METHODS_BY_KEY) == len(spec.METHODS) == len(spec.METHODS_BY_NAME)
    for method in spec.METHODS:
        assert spec.method(method.full_name) is method
        assert spec.METHODS_BY_KEY[method.key] is method


def test_queue_declare_packs_its_five_bits_in_one_octet() -> None:
    method = spec.method("queue.declare")
    # reserved_1, queue, passive, durable, exclusive, auto_delete, nowait, arguments
    payload = codec.encode_method_payload(method, (0, "q", True, False, True, False, True, {}))
    assert payload == b"\x00\x32\x00\x0a" + b"\x00\x00" + b"\x01q" + bytes([0b10101]) + b"\x00\x00\x00\x00"
    for bit in range(5):
        flags = [False] * 5
        flags[bit] = True
        payload = codec.encode_method_payload(method, (0, "q", *flags, {}))
        assert payload[8] == 1 << bit
        assert codec.decode_method_payload(payload)[1][2:7] == tuple(flags)


def test_exchange_declare_packs_its_five_bits_in_one_octet() -> None:
    method = spec.method("exchange.declare")
    payload = codec.encode_method_payload(method, (0, "x", "direct", False, True, True, False, False, {"a": 1}))
    assert payload[4:6 + 2 + 7] == b"\x00\x00\x01x\x06direct"
    assert payload[15] == 0b00110
    assert len(payload) == 16 + len(codec.encode_table({"a": 1}))


@pytest.mark.parametrize(("multiple", "requeue", "octet"), [(False, False, 0), (True, False, 1), (False, True, 2),
                                                             (True, True, 3)])
def test_basic_nack_packs_its_two_bits(multiple: bool, requeue: bool, octet: int) -> None:
    method = spec.method("basic.nack")
    payload = codec.encode_method_payload(method, (7, multiple, requeue))
    assert payload == b"\x00\x3c\x00\x78" + struct.pack(">Q", 7) + bytes([octet])
    assert codec.decode_method_payload(payload) == (method, (7, multiple, requeue))


def test_bits_separated_by_other_arguments_take_an_octet_each() -> None:
    method = spec.method("basic.deliver")  # consumer_tag, delivery_tag, redelivered, exchange, routing_key
    payload = codec.encode_method_payload(method, ("ct", 2**64 - 1, True, "ex", "rk"))
    assert payload[4:] == b"\x02ct" + b"\xff" * 8 + b"\x01" + b"\x02ex" + b"\x02rk"


def test_more_than_eight_consecutive_bits_spill_into_a_second_octet() -> None:
    method = spec.MethodSpec(99, 1, "bits", (*((f"b{i}", spec.BIT) for i in range(11)), ("s", spec.SHORT)))
    args = (True, False, False, False, False, False, False, True, True, False, True, 0x1234)
    raw = codec.encode_arguments(method, args)
    assert raw == bytes([0b10000001, 0b101]) + b"\x12\x34"
    assert codec.decode_arguments(method, raw, 0) == (args, len(raw))


def test_wrong_argument_count_and_out_of_range_values_raise_codec_error() -> None:
    with pytest.raises(CodecError):
        codec.encode_method_payload(spec.method("basic.ack"), (1,))
    with pytest.raises(CodecError):
        codec.encode_method_payload(spec.method("basic.qos"), (0, 2**16, False))
    with pytest.raises(CodecError):
        codec.encode_method_payload(spec.method("basic.ack"), (-1, False))
    with pytest.raises(CodecError):
        codec.encode_method_payload(spec.method("queue.declare"), (0, "q" * 256, False, False, False, False,
                                                                   False, {}))


# --- content properties ----------------------------------------------------------------------------


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(properties)
def test_properties_round_trip(props: dict[str, Any]) -> None:
    raw = codec.encode_properties(props)
    assert codec.decode_properties(raw) == props
    for name, _kind in spec.BASIC_PROPERTIES:
        assert codec.property_value(raw, name) == props.get(name)


@pytest.mark.parametrize(("index", "name_kind"), list(enumerate(spec.BASIC_PROPERTIES)))
def test_each_property_alone_sets_its_flag(index: int, name_kind: tuple[str, str]) -> None:
    name, kind = name_kind
    value = {spec.SHORTSTR: "v", spec.OCTET: 2, spec.TABLE: {"h": 1}, spec.TIMESTAMP: 1_600_000_000}[kind]
    raw = codec.encode_properties({name: value})
    assert struct.unpack(">H", raw[:2])[0] == 1 << (15 - index)
    assert codec.decode_properties(raw) == {name: value}


def test_none_properties_are_left_out() -> None:
    assert codec.encode_properties({"content_type": None, "priority": None}) == b"\x00\x00"
    assert codec.decode_properties(b"\x00\x00") == {}


def test_properties_as_a_client_sends_them() -> None:
    raw = (struct.pack(">H", 0x8000 | 0x1000 | 0x0800 | 0x0040)  # content_type, delivery_mode, priority, timestamp
           + b"\x10application/json" + b"\x02" + b"\x09"
           + struct.pack(">Q", 1_700_000_000))
    assert codec.decode_properties(raw) == {"content_type": "application/json", "delivery_mode": 2, "priority": 9,
                                            "timestamp": 1_700_000_000}
    assert codec.property_value(raw, "priority") == 9
    assert codec.property_value(raw, "app_id") is None


@pytest.mark.parametrize("flags", [0x0001, 0x0002, 0x8001])
def test_property_flags_class_basic_does_not_have_are_refused(flags: int) -> None:
    with pytest.raises(CodecError):
        codec.decode_properties(struct.pack(">H", flags) + b"\x00" * 16)


# --- malformed input -------------------------------------------------------------------------------


def _every_prefix_fails(decode: Any, raw: bytes) -> None:
    for cut in range(len(raw)):
        with pytest.raises(CodecError):
            decode(raw[:cut])


@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(field_tables.filter(bool))
def test_truncated_tables_raise_codec_error(table: dict[str, Any]) -> None:
    raw = codec.encode_table(table)
    _every_prefix_fails(lambda b: codec.decode_table(b, 0), raw)
    # the same bytes with a declared size cut short: a shorter table when the cut falls between entries,
    # else the last value overruns the table
    for cut in range(len(raw) - 4):
        try:
            shorter, _ = codec.decode_table(table_bytes(raw[4 : 4 + cut]) + raw[4 + cut :], 0)
        except CodecError:
            continue
        assert list(shorter.items()) == list(table.items())[: len(shorter)]


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(spec.METHODS).flatmap(lambda m: st.tuples(st.just(m), arguments_of(m))))
def test_truncated_method_payloads_raise_codec_error(method_args: tuple[spec.MethodSpec, tuple[Any, ...]]) -> None:
    method, args = method_args
    raw = codec.encode_method_payload(method, args)
    _every_prefix_fails(codec.decode_method_payload, raw)
    with pytest.raises(CodecError):
        codec.decode_method_payload(raw + b"\x00")  # a byte left over


@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(properties)
def test_truncated_properties_raise_codec_error(props: dict[str, Any]) -> None:
    raw = codec.encode_properties(props)
    _every_prefix_fails(codec.decode_properties, raw)
    with pytest.raises(CodecError):
        codec.decode_properties(raw + b"\x00")


@pytest.mark.parametrize(
    "raw",
    [
        table_bytes(b"\x01kI\x00\x00\x00") + b"\x01",  # declared size cuts the value
        b"\x00\x00\x00\x09\x01kI\x00\x00\x00\x01",  # declared size past the end
        table_bytes(b"\x01kZ"),  # unknown tag
        table_bytes(b"\x01k\x00"),  # NUL is not a tag either
        table_bytes(b"\x05kI"),  # key runs past the end
        table_bytes(b"\x02\xff\xfeV"),  # key not UTF-8
        table_bytes(b"\x01kS\x00\x00\x00\x09abc"),  # long string past the table
        table_bytes(b"\x01kA\x00\x00\x00\x02I\x00\x00\x00\x01"),  # array's size cuts its item
        table_bytes(b"\x01kA\x00\x00\x00\x09I\x00\x00\x00\x01"),  # array past the table
        table_bytes(b"\x01kF\x00\x00\x00\x01\x00"),  # nested table: key without a value
        table_bytes(b"\x01kD\x02\x00\x00"),  # decimal cut
        table_bytes(b"\x01kT\x00\x00"),  # timestamp cut
    ],
)
def test_malformed_tables_raise_codec_error(raw: bytes) -> None:
    with pytest.raises(CodecError):
        codec.decode_table(raw, 0)


def test_malformed_method_payloads_raise_codec_error_with_the_reply_code() -> None:
    cases = {
        b"\x00\x3c": spec.FRAME_ERROR,  # no method id
        b"\x00\x3c\x03\xe7": spec.COMMAND_INVALID,  # basic/999
        b"\x00\x63\x00\x0a": spec.COMMAND_INVALID,  # class 99
        b"\x00\x3c\x00\x0a\x00\x00\x00\x00\x00\x01": spec.FRAME_ERROR,  # basic.qos without its bit
        b"\x00\x32\x00\x0a\x00\x00\x02\xff\xfe\x00\x00\x00\x00\x00": spec.FRAME_ERROR,  # queue name not UTF-8
        b"\x00\x32\x00\x0a\x00\x00\x01q\x00\x00\x00\x00\x03\x01kZ": spec.FRAME_ERROR,  # unknown tag in arguments
    }
    for raw, code in cases.items():
        with pytest.raises(CodecError) as info:
            codec.decode_method_payload(raw)
        assert info.value.reply_code == code, raw


def test_invalid_utf8_short_string_raises_codec_error() -> None:
    with pytest.raises(CodecError):
        codec.decode_shortstr(b"\x02\xc3\x28", 0)
    with pytest.raises(CodecError):
        codec.decode_shortstr(b"\x05abc", 0)
    assert codec.decode_shortstr(b"\x02\xc3\xa9", 0) == ("é", 3)


@settings(max_examples=400)
@given(st.binary(max_size=64))
def test_random_bytes_into_decode_table_only_raise_codec_error(raw: bytes) -> None:
    with contextlib.suppress(CodecError):
        codec.decode_table(raw, 0)


@settings(max_examples=300)
@given(st.binary(max_size=40), st.sampled_from(spec.METHODS))
def test_random_bytes_into_decode_method_payload_only_raise_codec_error(raw: bytes, method: spec.MethodSpec) -> None:
    for payload in (raw, struct.pack(">HH", method.class_id, method.method_id) + raw):
        with contextlib.suppress(CodecError):
            codec.decode_method_payload(payload)


@settings(max_examples=300)
@given(st.binary(max_size=60), st.integers(min_value=0, max_value=0xFFFF))
def test_random_bytes_into_decode_properties_only_raise_codec_error(raw: bytes, flags: int) -> None:
    for payload in (raw, struct.pack(">H", flags & 0xFFFC) + raw):
        with contextlib.suppress(CodecError):
            codec.decode_properties(payload)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(field_tables.filter(bool), st.data())
def test_mutated_tables_only_raise_codec_error(table: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray(codec.encode_table(table))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        raw[data.draw(st.integers(min_value=0, max_value=len(raw) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(CodecError):
        codec.decode_table(bytes(raw), 0)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(spec.METHODS).flatmap(lambda m: st.tuples(st.just(m), arguments_of(m))), st.data())
def test_mutated_method_payloads_only_raise_codec_error(method_args: tuple[spec.MethodSpec, tuple[Any, ...]],
                                                        data: st.DataObject) -> None:
    raw = bytearray(codec.encode_method_payload(*method_args))
    position = data.draw(st.integers(min_value=4, max_value=len(raw)))
    raw[position:position + data.draw(st.integers(0, 3))] = data.draw(st.binary(max_size=4))
    with contextlib.suppress(CodecError):
        codec.decode_method_payload(bytes(raw))


# --- frames ----------------------------------------------------------------------------------------


def test_frame_layout() -> None:
    assert codec.frame(spec.FRAME_BODY, 3, b"abc") == b"\x03\x00\x03\x00\x00\x00\x03abc\xce"
    assert codec.frame(spec.FRAME_HEARTBEAT, 0, b"") == codec.HEARTBEAT_FRAME
    assert codec.method_frame(1, spec.method("tx.select")) == b"\x01\x00\x01\x00\x00\x00\x04\x00\x5a\x00\x0a\xce"


@pytest.mark.parametrize(("size", "bodies"), [(0, []), (1, [1]), (4088, [4088]), (4089, [4088, 1]),
                                              (10000, [4088, 4088, 1824])])
def test_content_frames_cut_bodies_at_frame_max_minus_eight(size: int, bodies: list[int]) -> None:
    body = bytes(range(256)) * (size // 256 + 1)
    frames = codec.content_frames(5, codec.encode_properties({"priority": 1}), body[:size], 4096)
    assert frames[0] == codec.frame(spec.FRAME_HEADER, 5, struct.pack(">HHQ", 60, 0, size) + b"\x08\x00\x01")
    assert [len(f) - 8 for f in frames[1:]] == bodies
    assert all(f[:3] == b"\x03\x00\x05" and f[-1:] == b"\xce" for f in frames[1:])
    assert b"".join(f[7:-1] for f in frames[1:]) == body[:size]


# --- cross-check against pamqp ---------------------------------------------------------------------


def split_frame(raw: bytes) -> tuple[int, int, bytes]:
    ftype, channel, size = struct.unpack_from(">BHI", raw, 0)
    assert len(raw) == size + 8 and raw[-1] == 0xCE
    return ftype, channel, raw[7:-1]


QUEUE_ARGUMENTS: dict[str, Any] = {
    "x-max-length": 10, "x-message-ttl": 60000, "x-max-priority": 200, "x-big": 2**40, "x-neg": -40000,
    "x-dead-letter-exchange": "dlx", "x-flag": True, "x-ratio": 0.5, "x-none": None,
    "x-list": [1, "two", {"three": 3}], "x-decimal": decimal.Decimal("3.14"),
    "x-when": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC), "x-bin": bytearray(b"\x00\xff"),
}


def test_queue_declare_from_pamqp() -> None:
    command = pc.Queue.Declare(queue="orders", durable=True, auto_delete=True, arguments=QUEUE_ARGUMENTS)
    ftype, channel, payload = split_frame(pamqp_frame.marshal(command, 7))
    assert (ftype, channel) == (spec.FRAME_METHOD, 7)
    method, args = codec.decode_method_payload(payload)
    assert method is spec.method("queue.declare")
    assert args == (0, "orders", False, True, False, True, False, QUEUE_ARGUMENTS)


def test_queue_declare_to_pamqp() -> None:
    arguments = dict(QUEUE_ARGUMENTS, **{"x-bin": b"\x00\xff"})
    raw = codec.method_frame(3, spec.method("queue.declare"), (0, "orders", True, False, True, False, True,
                                                                arguments))
    consumed, channel, command = pamqp_frame.unmarshal(raw)
    assert (consumed, channel) == (len(raw), 3)
    assert isinstance(command, pc.Queue.Declare)
    assert (command.queue, command.passive, command.durable, command.exclusive, command.auto_delete,
            command.nowait) == ("orders", True, False, True, False, True)
    assert command.arguments == arguments


def test_basic_publish_with_content_from_pamqp() -> None:
    props = pc.Basic.Properties(content_type="text/plain", headers={"h": 1, "s": "v"}, delivery_mode=2,
                                priority=3, correlation_id="c", reply_to="r", expiration="1000",
                                message_id="m", timestamp=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
                                message_type="t", user_id="guest", app_id="a")
    body = b"x" * 5000
    raws = [pamqp_frame.marshal(pc.Basic.Publish(exchange="ex", routing_key="rk", mandatory=True), 2),
            pamqp_frame.marshal(pamqp_header.ContentHeader(0, len(body), props), 2),
            pamqp_frame.marshal(pamqp_body.ContentBody(body), 2)]
    _, _, payload = split_frame(raws[0])
    assert codec.decode_method_payload(payload) == (spec.method("basic.publish"), (0, "ex", "rk", True, False))
    ftype, channel, header = split_frame(raws[1])
    assert (ftype, channel) == (spec.FRAME_HEADER, 2)
    assert struct.unpack_from(">HHQ", header) == (60, 0, 5000)
    assert codec.decode_properties(header[12:]) == {
        "content_type": "text/plain", "headers": {"h": 1, "s": "v"}, "delivery_mode": 2, "priority": 3,
        "correlation_id": "c", "reply_to": "r", "expiration": "1000", "message_id": "m",
        "timestamp": 1704164645, "type": "t", "user_id": "guest", "app_id": "a",
    }
    assert split_frame(raws[2]) == (spec.FRAME_BODY, 2, body)


def test_basic_publish_with_content_to_pamqp() -> None:
    props = {"content_type": "application/json", "headers": {"k": [1, 2]}, "delivery_mode": 1,
             "timestamp": 1704164645, "cluster_id": "cl"}
    raws = [codec.method_frame(4, spec.method("basic.publish"), (0, "amq.topic", "a.b", False, True)),
            *codec.content_frames(4, codec.encode_properties(props), b"hello", 4096)]
    commands = [pamqp_frame.unmarshal(raw)[2] for raw in raws]
    publish, header, body = commands
    assert isinstance(publish, pc.Basic.Publish)
    assert (publish.exchange, publish.routing_key, publish.mandatory, publish.immediate) == \
        ("amq.topic", "a.b", False, True)
    assert isinstance(header, pamqp_header.ContentHeader)
    assert header.body_size == 5
    assert header.properties.content_type == "application/json"
    assert header.properties.headers == {"k": [1, 2]}
    assert header.properties.delivery_mode == 1
    assert header.properties.timestamp == datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert header.properties.cluster_id == "cl"
    assert isinstance(body, pamqp_body.ContentBody)
    assert body.value == b"hello"


def test_basic_deliver_both_ways() -> None:
    ours = codec.method_frame(9, spec.method("basic.deliver"), ("ctag", 2**40, True, "ex", "rk"))
    _, channel, command = pamqp_frame.unmarshal(ours)
    assert channel == 9
    assert isinstance(command, pc.Basic.Deliver)
    assert (command.consumer_tag, command.delivery_tag, command.redelivered, command.exchange,
            command.routing_key) == ("ctag", 2**40, True, "ex", "rk")
    theirs = pamqp_frame.marshal(pc.Basic.Deliver("ctag", 2**40, True, "ex", "rk"), 9)
    assert theirs == ours


def test_connection_start_both_ways() -> None:
    server_properties: dict[str, Any] = {"product": "Leveret", "capabilities": {"publisher_confirms": True,
                                                                "consumer_cancel_notify": True}}
    ours = codec.method_frame(0, spec.method("connection.start"),
                              (0, 9, server_properties, b"PLAIN AMQPLAIN", b"en_US"))
    _, _, command = pamqp_frame.unmarshal(ours)
    assert isinstance(command, pc.Connection.Start)
    assert (command.version_major, command.version_minor) == (0, 9)
    assert command.server_properties == server_properties
    assert (command.mechanisms, command.locales) == ("PLAIN AMQPLAIN", "en_US")
    theirs = pamqp_frame.marshal(pc.Connection.Start(server_properties=server_properties,
                                                     mechanisms="PLAIN AMQPLAIN", locales="en_US"), 0)
    method, args = codec.decode_method_payload(split_frame(theirs)[2])
    assert method is spec.method("connection.start")
    assert args == (0, 9, server_properties, b"PLAIN AMQPLAIN", b"en_US")


def test_connection_start_ok_from_pamqp() -> None:
    command = pc.Connection.StartOk(client_properties={"product": "aio-pika", "capabilities": {"basic.nack": True}},
                                    mechanism="PLAIN", response="\x00guest\x00guest", locale="en_US")
    method, args = codec.decode_method_payload(split_frame(pamqp_frame.marshal(command, 0))[2])
    assert method is spec.method("connection.start-ok")
    assert args == ({"product": "aio-pika", "capabilities": {"basic.nack": True}}, "PLAIN", b"\x00guest\x00guest",
                    "en_US")


@pytest.mark.parametrize(
    ("value", "raw"),
    [(-128, b"b\x80"), (127, b"b\x7f"), (-32768, b"s\x80\x00"), (40000, b"u\x9c\x40"),
     (-(2**31), b"I\x80\x00\x00\x00"), (2**32 - 1, b"i\xff\xff\xff\xff"), (2**40, b"l" + struct.pack(">q", 2**40))],
)
def test_pamqp_table_integers_decode(value: int, raw: bytes) -> None:
    assert pamqp_encode.table_integer(value) == raw
    assert codec.decode_field_value(raw, 0) == (value, len(raw))


# Values both implementations represent the same way (pamqp: floats as 32-bit 'f', bytes only as bytearray,
# timestamps after 2106 read as milliseconds, keys cut at 128 bytes).
common_values = st.recursive(
    st.one_of(st.booleans(), int64s, st.sampled_from([0.5, -1.25, 1e10, 0.0]), st.text(max_size=20), st.none(),
              decimals, whole_second_datetimes.filter(lambda d: d.year < 2100)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=20), children,
                                                                                max_size=4)),
    max_leaves=12,
)
common_tables = st.dictionaries(st.text(max_size=20), common_values, max_size=6)


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(common_tables)
def test_tables_agree_with_pamqp(table: dict[str, Any]) -> None:
    theirs = pamqp_encode.field_table(table)
    assert codec.decode_table(theirs, 0) == (table, len(theirs))
    ours = codec.encode_table(table)
    assert pamqp_decode.field_table(ours) == (len(ours), table)


def test_long_int_keeps_its_64_bit_tag() -> None:
    encoded = codec.encode_field_value(codec.LongInt(1))
    assert encoded == b"l" + (1).to_bytes(8, "big")
    value, _ = codec.decode_field_value(encoded, 0)
    assert type(value) is codec.LongInt and value == 1
    assert codec.encode_field_value(value) == encoded
    assert codec.encode_field_value(1) == b"I\x00\x00\x00\x01"
