"""Weights from a signed but hostile neighbour: whatever it sends, a receiver spends bounded
memory and CPU on it and answers with its own error (ValueError from the parser, a Rejected
from the reassembler), never another exception."""

import contextlib
import json
import random
import resource
import struct
import time

import pytest
import torch

from peers.protocol import WeightsChunk, header_bytes
from peers.wire.exchange import Reassembler, Rejected
from peers.wire.format import describe, pack_state, payload_bound
from peers.wire.signing import NodeKey
from peers.wire.tensorbytes import MAX_HEADER_BYTES, dump, parse

SENDER = 7


def safetensors_with_header(header: dict | str, body: bytes = b"") -> bytes:
    head = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(head)) + head + body


def test_a_shape_of_huge_integers_is_refused_at_once():
    """1,000 dimensions of 4,000 digits each (4 MB): 42 s of CPU before, the reference library
    refuses it in under 3 ms."""
    dims = ",".join(["9" * 4000] * 1000)
    crafted = safetensors_with_header(f'{{"w":{{"dtype":"F32","shape":[{dims}],"data_offsets":[0,4]}}}}', b"\0" * 4)
    started = time.process_time()
    with pytest.raises(ValueError):
        parse(bytearray(crafted))
    assert time.process_time() - started < 0.5


@pytest.mark.parametrize("shape", [[2**63, 2**63], [2**64], [10**30, 0], [-1], [2**62, 4]])
def test_overflowing_shapes_raise_the_parsers_own_error(shape):
    crafted = safetensors_with_header({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4]}}, b"\0" * 4)
    with pytest.raises(ValueError):
        parse(bytearray(crafted))


def test_the_header_limit_is_the_formats():
    assert MAX_HEADER_BYTES == 100_000_000
    crafted = struct.pack("<Q", 100_000_001) + b" " * 100_000_001
    with pytest.raises(ValueError, match="header length"):
        parse(crafted)


def test_fuzzed_headers_and_bodies_only_raise_value_error_quickly():
    rng = random.Random(1)
    good = dump({"a.weight": torch.randn(8, 4), "a.bias": torch.randn(8), "n": torch.arange(3)})
    (head_len,) = struct.unpack_from("<Q", good)
    head = good[8 : 8 + head_len].decode()
    tokens = ["0", "-1", "1e308", "9" * 30, "null", "true", '"F32"', '"U64"', "[]", "{}", "[0,0]", '"x"']
    slowest = 0.0
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(3000):
        if i % 2:  # mutate the JSON text
            text = list(head)
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(len(text))
                text[at : at + rng.randint(0, 6)] = rng.choice(tokens)
            candidate = safetensors_with_header("".join(text), good[8 + head_len :])
        else:  # flip, cut or extend raw bytes anywhere
            candidate = bytearray(good)
            for _ in range(rng.randint(1, 6)):
                at = rng.randrange(len(candidate))
                candidate[at] = rng.randrange(256)
            if rng.random() < 0.3:
                candidate = candidate[: rng.randrange(len(candidate))]
        started = time.perf_counter()
        with contextlib.suppress(ValueError):
            parse(bytearray(candidate))
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 0.1, slowest
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 64 * 1024, grown_kb


def test_a_receiver_holds_no_more_than_its_model_could_need():
    """Three signed 1-byte chunks declaring 100 MiB each used to make a receiver allocate 300 MiB."""
    key = NodeKey.generate()
    model = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    bound = payload_bound(describe(model))
    assert len(pack_state(model)) <= bound < 1 << 20
    reassembler = Reassembler({SENDER: key.public_key_hex}, job_id=1, max_bytes=bound)
    rejected = []
    for seq in (1, 2, 3):
        chunk = WeightsChunk(
            job_id=1,
            round=1,
            sender=SENDER,
            seq=seq,
            index=0,
            count=2,
            size=100 << 20,
            sha256="",
            signature=b"",
            data=b"x",
        )
        chunk.signature = key.sign(header_bytes(chunk))
        result = reassembler.feed(chunk)
        assert isinstance(result, Rejected)
        rejected.append(result.reason)
    assert all(reason.startswith("payload too large") for reason in rejected)
    assert reassembler.pending() == []


@pytest.mark.parametrize("compression", ["none", "fp16", "bf16", "int8", "int8:affine", "topk:0.1", "topk:1"])
def test_every_honest_encoding_fits_the_bound(compression):
    from peers.wire.codec import WeightsEncoder

    model = {"conv.weight": torch.randn(8, 3, 3, 3), "fc.weight": torch.randn(10, 72), "fc.bias": torch.randn(10)}
    bound = payload_bound(describe(model))
    encoder = WeightsEncoder(compression)
    for r in range(1, 4):
        model = {k: v + 0.01 * torch.randn_like(v) for k, v in model.items()}
        assert len(encoder.encode(model, r)) <= bound
    assert len(encoder.snapshot(model, 3)) <= bound
