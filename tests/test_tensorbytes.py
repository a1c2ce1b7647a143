"""safetensors bytes without the copies: same format as safetensors, strict about what arrives."""

import itertools
import json
import random
import struct

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from peers.wire.tensorbytes import dump, parse


def _mixed():
    g = torch.Generator().manual_seed(1)
    return {
        "w": torch.randn(6, 5, generator=g),
        "b": torch.randn(5, generator=g).double(),
        "h": torch.randn(7, generator=g).half(),
        "bf": torch.randn(3, generator=g).bfloat16(),
        "steps": torch.tensor(4),
        "mask": torch.tensor([True, False, True]),
        "q": torch.arange(-3, 4, dtype=torch.int8),
        "u": torch.arange(5, dtype=torch.uint8),
        "i32": torch.arange(3, dtype=torch.int32),
        "i16": torch.arange(3, dtype=torch.int16),
        "u16": torch.tensor([0, 1, 65535], dtype=torch.uint16),
        "u32": torch.tensor([-1, 7], dtype=torch.int32).view(torch.uint32),  # 2**32 - 1
        "u64": torch.tensor([-1, 7], dtype=torch.int64).view(torch.uint64),  # 2**64 - 1
        "empty": torch.zeros(0, 4),
    }


def _with_header(header: dict, body: bytes) -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + body


def test_dump_is_byte_identical_to_safetensors():
    state = _mixed()
    assert dump(state) == st_save(state)
    assert dump(state, {"kind": "key"}) == st_save(state, metadata={"kind": "key"})


@pytest.mark.parametrize("container", [bytes, bytearray])
def test_parse_reads_what_safetensors_writes(container):
    state = _mixed()
    tensors, meta = parse(container(st_save(state, metadata={"round": "3"})))
    assert meta == {"round": "3"} and tensors.keys() == state.keys()
    for name, t in state.items():
        assert tensors[name].dtype == t.dtype and torch.equal(tensors[name], t), name


def test_safetensors_reads_what_dump_writes():
    state = _mixed()
    loaded = st_load(dump(state))
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_bytearray_is_viewed_not_copied_and_bytes_are_copied():
    state = {"w": torch.arange(1000, dtype=torch.float32)}
    buffer = bytearray(dump(state))
    tensors, _ = parse(buffer)
    address = tensors["w"].data_ptr()
    base = torch.frombuffer(buffer, dtype=torch.uint8).data_ptr()
    assert base <= address < base + len(buffer)  # a view into the buffer
    tensors["w"][0] = 42.0
    assert parse(bytes(buffer))[0]["w"][0] == 42.0
    frozen = dump(state)
    copied, _ = parse(frozen)
    copied["w"][1] = -1.0  # writable, and the immutable source is untouched
    assert parse(frozen)[0]["w"][1] == 1.0


def test_an_empty_tensor_may_sit_at_any_boundary_whatever_the_key_order():
    """Byte ranges are taken in (start, end) order, as safetensors does: an empty tensor at a
    non-empty one's start is valid whether its key comes before or after it."""
    body = struct.pack("<3f", 1.5, -2.0, 3.0)
    entries = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
        "e0": {"dtype": "F64", "shape": [0], "data_offsets": [0, 0]},
        "e8": {"dtype": "I8", "shape": [3, 0], "data_offsets": [8, 8]},
        "e12": {"dtype": "U64", "shape": [0], "data_offsets": [12, 12]},
    }
    for order in itertools.permutations(entries):
        for container in (bytes, bytearray):
            tensors, _ = parse(container(_with_header({k: entries[k] for k in order}, body)))
            assert tensors["a"].tolist() == [1.5, -2.0] and tensors["b"].tolist() == [3.0]
            assert [(tuple(tensors[k].shape), tensors[k].dtype) for k in ("e0", "e8", "e12")] == [
                ((0,), torch.float64),
                ((3, 0), torch.int8),
                ((0,), torch.uint64),
            ]


def test_unsigned_dtypes_both_ways():
    state = {k: v for k, v in _mixed().items() if k.startswith("u")}
    assert dump(state) == st_save(state)
    for container in (bytes, bytearray):
        tensors, _ = parse(container(dump(state)))
        assert all(tensors[k].dtype == v.dtype and torch.equal(tensors[k], v) for k, v in state.items())


def test_misaligned_tensor_from_another_writer_is_copied_out():
    body = b"\x00" + struct.pack("<2f", 1.5, -2.0)  # a u8 then two f32 at offset 1
    header = {
        "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
        "f": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]},
    }
    tensors, _ = parse(bytearray(_with_header(header, body)))
    assert tensors["f"].tolist() == [1.5, -2.0]


GOOD = {
    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
}


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\x01\x00", "shorter than a safetensors header"),
        (struct.pack("<Q", 1 << 40) + b"{}", "header length"),
        (struct.pack("<Q", 3) + b"{x}", "header is not JSON"),
        (struct.pack("<Q", 2) + b"[]", "header is not a JSON object"),
        (_with_header({**GOOD, "__metadata__": {"k": 1}}, bytes(12)), "metadata must be str -> str"),
        (
            _with_header({"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}, bytes(1)),
            "unsupported dtype",
        ),
        (_with_header({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)), "bad shape"),
        (
            _with_header({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, bytes(8)),
            "header numbers are integers",
        ),
        (_with_header({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, bytes(8)), "bad data_offsets"),
        (
            _with_header({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
            "data_offsets of 'a' do not match",
        ),
        (
            _with_header({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}}, bytes(8)),
            "bad header entry",
        ),
        (_with_header({**GOOD, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(12)), "data of"),
        (_with_header({**GOOD, "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}, bytes(16)), "data of"),
        (
            _with_header({"e": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}, **GOOD}, bytes(12)),
            "data of e starts at 4",
        ),
        (
            _with_header({"e": {"dtype": "F32", "shape": [0], "data_offsets": [16, 16]}, **GOOD}, bytes(12)),
            "data of e starts at 16",
        ),
        (
            _with_header({"e": {"dtype": "F32", "shape": [0], "data_offsets": [0, 4]}, **GOOD}, bytes(16)),
            "data_offsets of 'e' do not match",
        ),
        (_with_header(GOOD, bytes(16)), "tensor data covers 12 bytes, buffer holds 16"),
        (_with_header(GOOD, bytes(8)), "tensor data covers 12 bytes, buffer holds 8"),
        (_with_header({"m": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\x01\x07"), "boolean tensor"),
    ],
)
def test_malformed_buffers_are_refused_with_a_reason(data, reason):
    for container in (bytes, bytearray):
        with pytest.raises(ValueError) as info:
            parse(container(data))
        assert reason in str(info.value)


def test_random_corruption_never_escapes_as_anything_but_value_error():
    good = dump(_mixed(), {"round": "1"})
    header_end = 8 + struct.unpack("<Q", good[:8])[0]
    rng = random.Random(0)
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(2000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            spot = rng.randrange(header_end + 64)  # mostly the header, a little data
            data[spot] = rng.randrange(256)
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        try:
            parse(data)
            outcomes["parsed"] += 1
        except ValueError:
            outcomes["refused"] += 1
    assert outcomes["parsed"] and outcomes["refused"] > 500


def test_dump_refuses_what_safetensors_cannot_hold():
    with pytest.raises(ValueError, match="no safetensors code"):
        dump({"c": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(ValueError, match="metadata must be str -> str"):
        dump({"a": torch.zeros(1)}, {"k": 1})
    with pytest.raises(ValueError, match="invalid tensor name"):
        dump({"__metadata__": torch.zeros(1)})
