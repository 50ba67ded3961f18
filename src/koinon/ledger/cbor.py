"""Canonical CBOR: the byte encoding of everything Koinon signs or hashes (docs/ledger.md §1).

A strict subset of RFC 8949 with its "core deterministic encoding" (§4.2.1), so that every value has exactly one
encoding and another implementation can reproduce our bytes:

- major types 0/1 (integers, −2⁶⁴ … 2⁶⁴−1), 2 (byte strings), 3 (UTF-8 text strings), 4 (arrays), 5 (maps),
  and the simple values false (0xf4), true (0xf5), null (0xf6);
- arguments in the shortest form; definite lengths only;
- map keys are text strings, unique, ordered by their encoded bytes (length first, then bytewise: §4.2.1);
- **no floating-point numbers and no tags**: quantities that peers must agree on are integers.

:func:`decode` accepts only canonical input (it re-encodes and compares), so two different byte strings never
decode to the same value; it never raises anything but :class:`NonCanonical` on malformed input.
"""

from __future__ import annotations

from typing import Union

Value = Union[int, bytes, str, bool, None, list["Value"], dict[str, "Value"]]  # noqa: UP007 (recursive alias)

MAX_DEPTH = 16
_SIMPLE = {20: False, 21: True, 22: None}
_ARG_SIZES = {24: 1, 25: 2, 26: 4, 27: 8}  # additional info → bytes of the argument
_MINIMAL = {1: 24, 2: 1 << 8, 4: 1 << 16, 8: 1 << 32}  # smallest argument each size may carry (shortest form)


class NonCanonical(ValueError):
    """The bytes are not canonical Koinon CBOR (malformed, non-minimal, unsorted, floats, tags, …)."""


def _head(major: int, arg: int) -> bytes:
    if arg < 24:
        return bytes([major << 5 | arg])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if arg < 1 << (8 * size):
            return bytes([major << 5 | info]) + arg.to_bytes(size, "big")
    raise ValueError(f"integer {arg} does not fit in 64 bits")


def encode(value: Value) -> bytes:
    """Canonical bytes of ``value``. Raises TypeError for floats and other unsupported types."""
    out = bytearray()
    _encode(value, out, 0)
    return bytes(out)


def _encode(value: Value, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"nesting deeper than {MAX_DEPTH}")
    if value is False:
        out.append(0xF4)
    elif value is True:
        out.append(0xF5)
    elif value is None:
        out.append(0xF6)
    elif isinstance(value, int):
        out += _head(0, value) if value >= 0 else _head(1, -1 - value)
    elif isinstance(value, (bytes, bytearray)):
        out += _head(2, len(value)) + bytes(value)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out += _head(3, len(raw)) + raw
    elif isinstance(value, (list, tuple)):
        out += _head(4, len(value))
        for item in value:
            _encode(item, out, depth + 1)
    elif isinstance(value, dict):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"map keys must be text strings, got {type(key).__name__}")
            items.append((encode(key), item))
        items.sort(key=lambda kv: (len(kv[0]), kv[0]))
        out += _head(5, len(items))
        for key_bytes, item in items:
            out += key_bytes
            _encode(item, out, depth + 1)
    else:
        raise TypeError(f"canonical CBOR has no encoding for {type(value).__name__} (floats are not allowed)")


def decode(data: bytes) -> Value:
    """Decode canonical bytes; raise :class:`NonCanonical` for anything else (never another exception)."""
    try:
        value, end = _decode(bytes(data), 0, 0)  # bytes, not a memoryview: indexing and slicing are cheaper
    except NonCanonical:
        raise
    except (IndexError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise NonCanonical(f"malformed CBOR: {e}") from None
    if end != len(data):
        raise NonCanonical(f"{len(data) - end} trailing bytes after the value")
    return value


def _read_arg(buf: bytes, pos: int, info: int) -> tuple[int, int]:
    if info < 24:
        return info, pos
    size = _ARG_SIZES.get(info)
    if size is None:
        raise NonCanonical(f"indefinite length or reserved additional info {info}")
    if pos + size > len(buf):
        raise NonCanonical("truncated argument")
    arg = int.from_bytes(buf[pos : pos + size], "big")
    if arg < _MINIMAL[size]:
        raise NonCanonical("integer or length not in its shortest form")
    return arg, pos + size


# _decode is the ledger's hottest function (every event read is decoded: ~25 items each). The inline fast paths
# below accept exactly what the general path accepts, with the same checks in the same order, and fall back to
# it for anything else, so values and errors are the same (bench/gov_bench.py; tests/unit/test_ledger_input.py).
def _decode(buf: bytes, pos: int, depth: int) -> tuple[Value, int]:
    if depth > MAX_DEPTH:
        raise NonCanonical(f"nesting deeper than {MAX_DEPTH}")
    if pos >= len(buf):
        raise NonCanonical("truncated input")
    initial = buf[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if major == 7:
        if info not in _SIMPLE:
            raise NonCanonical(f"floats and simple value {info} are not allowed")
        return _SIMPLE[info], pos
    if major == 6:
        raise NonCanonical("tags are not allowed")
    if info < 24:
        arg = info
    elif info == 24:  # _read_arg's one-byte case inline (lengths 24..255: ids, hashes, signatures, member ids)
        if pos + 1 > len(buf):
            raise NonCanonical("truncated argument")
        arg = buf[pos]
        if arg < 24:
            raise NonCanonical("integer or length not in its shortest form")
        pos += 1
    else:
        arg, pos = _read_arg(buf, pos, info)
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major == 2 or major == 3:
        end = pos + arg
        if end > len(buf):
            raise NonCanonical("truncated string")
        return (buf[pos:end] if major == 2 else buf[pos:end].decode("utf-8")), end
    n = len(buf)
    depth += 1  # of the items
    if major == 4:
        if arg > n - pos:
            raise NonCanonical("array longer than the input")
        items: list[Value] = []
        for _ in range(arg):
            # fast path: a byte string of 24..255 bytes (the event ids in parents)
            if depth <= MAX_DEPTH and pos + 1 < n and buf[pos] == 0x58 and buf[pos + 1] >= 24:
                end = pos + 2 + buf[pos + 1]
                if end <= n:
                    items.append(buf[pos + 2 : end])
                    pos = end
                    continue
            item, pos = _decode(buf, pos, depth)
            items.append(item)
        return items, pos
    # major == 5: map with text keys in canonical order
    if arg > (n - pos) // 2:
        raise NonCanonical("map longer than the input")
    result: dict[str, Value] = {}
    previous = b""
    key: Value
    for index in range(arg):
        key_start = pos
        # fast path: a text key of at most 23 bytes (every key Koinon writes)
        if depth <= MAX_DEPTH and pos < n and 0x60 <= buf[pos] < 0x78 and pos + 1 + buf[pos] - 0x60 <= n:
            pos += 1 + buf[pos] - 0x60
            key_bytes = buf[key_start:pos]
            key = key_bytes[1:].decode("utf-8")
        else:
            key, pos = _decode(buf, pos, depth)
            if not isinstance(key, str):
                raise NonCanonical("map keys must be text strings")
            key_bytes = buf[key_start:pos]
        if index and (len(key_bytes), key_bytes) <= (len(previous), previous):
            raise NonCanonical(f"map key {key!r} is duplicated or out of canonical order")
        previous = key_bytes
        result[key], pos = _decode(buf, pos, depth)
    return result, pos
