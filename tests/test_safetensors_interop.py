"""peers.wire.tensorbytes against the official ``safetensors`` library, both ways, on random
files: every dtype both support, random key orders, zero-length tensors anywhere, tensors laid
out in any order (aligned or not); and both refuse the same broken layouts."""

import json
import random
import struct
import warnings

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from peers.wire.tensorbytes import DTYPES, dump, parse


def _st_supports(dtype: torch.dtype) -> bool:
    try:
        with warnings.catch_warnings():  # probing quantized and complex-half dtypes warns
            warnings.simplefilter("ignore")
            st_save({"x": torch.zeros(2, dtype=dtype)})
    except Exception:
        return False
    return True


TORCH_DTYPES = sorted({v for v in vars(torch).values() if isinstance(v, torch.dtype)}, key=str)
BOTH = [d for d in TORCH_DTYPES if d in DTYPES.values() and _st_supports(d)]


def test_every_dtype_we_write_safetensors_reads_including_unsigned():
    assert sorted(DTYPES.values(), key=str) == BOTH
    # safetensors >= 0.4 writes U16/U32/U64 for torch's unsigned types: so must we
    assert {torch.uint16, torch.uint32, torch.uint64} <= {d for d in TORCH_DTYPES if _st_supports(d)}
    assert {torch.uint16, torch.uint32, torch.uint64} <= set(BOTH)


def random_tensor(rng: random.Random, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """Random values: every bit pattern for integers, normal values for floats, 0/1 for bool."""
    n = 1
    for d in shape:
        n *= d
    if dtype == torch.bool:
        return torch.tensor([rng.random() < 0.5 for _ in range(n)], dtype=torch.bool).reshape(shape)
    if dtype.is_floating_point:
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        return (torch.randn(n, generator=g) * 100).to(dtype).reshape(shape)
    raw = bytearray(rng.randbytes(n * dtype.itemsize)) or bytearray(1)
    return torch.frombuffer(raw, dtype=torch.uint8)[: n * dtype.itemsize].view(dtype).reshape(shape)


def random_state(seed: int) -> dict[str, torch.Tensor]:
    rng = random.Random(seed)
    state = {}
    for i in range(rng.randint(1, 12)):
        shape = tuple(rng.choice([0, 1, 2, 3, 5]) for _ in range(rng.randint(0, 3)))
        if rng.random() < 0.25:  # a zero-length tensor of any dtype
            shape = (*shape, 0)
        state[f"t{i}.{rng.choice(['w', 'b', 'z'])}"] = random_tensor(rng, rng.choice(BOTH), shape)
    return state


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (bitwise, so NaN payloads and -0.0 count too)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def same_state(got: dict, want: dict) -> bool:
    return got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)


def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack_from("<Q", data)
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict, body: bytes) -> bytes:
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + body


SEEDS = range(40)


@pytest.mark.parametrize("seed", SEEDS)
def test_we_parse_what_safetensors_saves(seed):
    state = random_state(seed)
    data = st_save(state, metadata={"seed": str(seed)})
    for container in (bytes, bytearray):
        tensors, meta = parse(container(data))
        assert same_state(tensors, state) and meta == {"seed": str(seed)}


@pytest.mark.parametrize("seed", SEEDS)
def test_safetensors_loads_what_we_dump(seed):
    state = random_state(seed)
    data = dump(state)
    assert same_state(st_load(data), state)
    assert data == st_save(state)  # same layout, byte for byte


@pytest.mark.parametrize("seed", SEEDS)
def test_any_key_order_and_layout_reads_the_same_in_both(seed):
    """Re-lay a file by hand: tensors' bytes in a random order (so some are misaligned), keys
    in another random order, zero-length tensors at random boundaries, among them offset 0
    after a non-empty tensor that starts there."""
    rng = random.Random(1000 + seed)
    state = random_state(seed)
    state[f"empty.{seed}"] = torch.zeros(0, dtype=rng.choice(BOTH))
    names = list(state)
    rng.shuffle(names)
    header, body = {}, b""
    for name in names:
        raw = state[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {
            "dtype": _code(state[name].dtype),
            "shape": list(state[name].shape),
            "data_offsets": [len(body), len(body) + len(raw)],
        }
        body += raw
    keys = list(header)
    rng.shuffle(keys)
    data = join({k: header[k] for k in keys}, body)
    assert same_state(st_load(data), state)
    for container in (bytes, bytearray):
        assert same_state(parse(container(data))[0], state)


def _code(dtype: torch.dtype) -> str:
    return next(code for code, d in DTYPES.items() if d == dtype)


def outcome(read, data, error):
    try:
        return read(data)
    except error:
        return None


@pytest.mark.parametrize("seed", range(20))
def test_both_accept_and_refuse_the_same_layouts(seed):
    """Shift one tensor's byte range (a zero-length one may land on another boundary, which is
    valid), or add or drop a byte at the end: safetensors and we accept the same files, with the
    same tensors, and refuse the same (gaps, overlaps, uncovered or missing bytes)."""
    rng = random.Random(seed)
    state = {**random_state(seed), "anchor": torch.arange(4, dtype=torch.int32)}
    header, body = split(st_save(state))
    variants = [join(header, body + b"\0"), join(header, body[:-1])]
    for name in rng.sample(sorted(header), min(3, len(header))):
        begin, end = header[name]["data_offsets"]
        for shift in (-4, -1, 1, 4):
            if begin + shift >= 0:
                moved = {**header, name: {**header[name], "data_offsets": [begin + shift, end + shift]}}
                variants.append(join(moved, body))
    refused = 0
    for data in variants:
        theirs = outcome(st_load, data, SafetensorError)
        ours = outcome(lambda d: parse(d)[0], data, ValueError)
        assert (theirs is None) == (ours is None)
        assert theirs is None or same_state(ours, theirs)
        refused += theirs is None
    assert refused >= 2  # at least the extra and the missing byte
