"""Weights as safetensors bytes, validation on arrival, and the simulated attacks."""

import pytest
import torch

from peers.attacks import ATTACK_MODES, corrupt, tamper_payload
from peers.wire.format import WeightsRejected, describe, pack_state, sha256_hex, unpack_state

MAX = 1 << 20


def _state():
    g = torch.Generator().manual_seed(0)
    return {
        "fc1.weight": torch.randn(64, 32, generator=g),
        "fc1.bias": torch.randn(64, generator=g),
        "fc2.weight": torch.randn(10, 64, generator=g),
        "fc2.bias": torch.randn(10, generator=g),
        "steps": torch.tensor(3, dtype=torch.int64),
    }


def _rejected(data, expected, match, max_bytes=MAX):
    with pytest.raises(WeightsRejected) as info:
        unpack_state(data, expected, max_bytes)
    assert info.value.reason == match or info.value.reason.startswith(match), info.value.reason
    return info.value.reason


def test_round_trip_exact():
    state = _state()
    data = pack_state(state)
    assert isinstance(data, bytes) and sha256_hex(data) == sha256_hex(pack_state(state))
    out = unpack_state(data, describe(state), MAX)
    assert out.keys() == state.keys()
    for k in state:
        assert torch.equal(out[k], state[k]) and out[k].dtype == state[k].dtype


def test_pack_non_contiguous_and_shared():
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {"t": base.t(), "view": base[0]}
    out = unpack_state(pack_state(state), describe(state), MAX)
    assert torch.equal(out["t"], base.t()) and torch.equal(out["view"], base[0])


def test_describe():
    d = describe(_state())
    assert d["fc1.weight"] == ((64, 32), "float32")
    assert d["steps"] == ((), "int64")


def test_expected_shapes_may_be_lists():
    state = _state()
    spec = {k: (list(s), dt) for k, (s, dt) in describe(state).items()}  # as after JSON
    unpack_state(pack_state(state), spec, MAX)


def test_wrong_shape():
    state, spec = _state(), describe(_state())
    state["fc1.weight"] = torch.zeros(3, 4)
    _rejected(pack_state(state), spec, "wrong shape for fc1.weight: (3, 4) != (64, 32)")


def test_wrong_dtype():
    state, spec = _state(), describe(_state())
    state["fc2.bias"] = state["fc2.bias"].double()
    _rejected(pack_state(state), spec, "wrong dtype for fc2.bias: float64 != float32")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite(value):
    state, spec = _state(), describe(_state())
    state["fc2.bias"][3] = value
    _rejected(pack_state(state), spec, "non-finite values in fc2.bias")


def test_missing_and_extra_tensors():
    spec = describe(_state())
    state = _state()
    del state["fc2.bias"]
    _rejected(pack_state(state), spec, "missing tensors: fc2.bias")
    state = _state()
    state["evil"] = torch.zeros(1)
    _rejected(pack_state(state), spec, "unexpected tensors: evil")


def test_oversize():
    data = pack_state(_state())
    _rejected(data, describe(_state()), f"payload too large: {len(data)} > 100 bytes", max_bytes=100)


@pytest.mark.parametrize(
    "data", [b"", b"garbage", b"\xff" * 64, b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":1}', b"\x80\x03cos\nsystem\nq\x00."]
)  # a pickle is just garbage here
def test_garbage(data):
    _rejected(data, describe(_state()), "unparseable safetensors payload")


def test_truncated_payload_is_garbage():
    data = pack_state(_state())
    _rejected(data[:-10], describe(_state()), "unparseable safetensors payload")


def test_attack_nan():
    bad = corrupt(_state(), "nan")
    assert torch.isnan(bad["fc1.weight"]).all()
    assert bad["steps"].item() == 3  # integer tensors untouched
    _rejected(pack_state(bad), describe(_state()), "non-finite values in fc1.bias")


def test_attack_shape():
    bad = corrupt(_state(), "shape")
    assert bad["fc1.weight"].shape == (65, 32)
    _rejected(pack_state(bad), describe(_state()), "wrong shape for fc1.weight: (65, 32) != (64, 32)")
    assert corrupt({"s": torch.tensor(1.0)}, "shape")["s"].shape == (1,)


def test_attack_none_and_bad_hash_leave_state_alone():
    state = _state()
    for mode in ("none", "bad-hash"):
        out = corrupt(state, mode)
        assert all(torch.equal(out[k], state[k]) for k in state)
        out["fc1.bias"].add_(1)  # a copy, not the caller's tensors
        assert not torch.equal(out["fc1.bias"], state["fc1.bias"])
    assert ATTACK_MODES[:5] == ("none", "nan", "shape", "bad-hash", "scale")  # more in tests/test_attacks.py
    with pytest.raises(ValueError):
        corrupt(state, "evil")


def test_tamper_payload_changes_hash_but_still_parses():
    data = pack_state(_state())
    bad = tamper_payload(data)
    assert len(bad) == len(data) and bad != data and sha256_hex(bad) != sha256_hex(data)
    unpack_state(bad, describe(_state()), MAX)  # only the hash check can catch it


@pytest.mark.parametrize(
    "state",
    [
        {"a": torch.randn(3, 4), "b.weight": torch.randn(7), "0.bias": torch.randn(2, 2, 2)},
        {"layer1.weight": torch.randn(10, 3).t(), "z": torch.zeros(1)},  # a non-contiguous view
        {"i": torch.arange(5), "f": torch.randn(3)},  # mixed dtypes take the safetensors path
        {"h": torch.randn(4, dtype=torch.bfloat16)},
    ],
)
def test_pack_state_writes_exactly_what_safetensors_writes(state):
    from safetensors.torch import save

    assert pack_state(state) == save({k: v.contiguous() for k, v in state.items()})


def test_finite_check_handles_overflowing_sums():
    from peers.wire.format import all_finite

    assert all_finite(torch.full((10,), 3e38))  # the sum overflows, every value is finite
    t = torch.randn(10)
    t[3] = float("nan")
    assert not all_finite(t)
    t[3] = float("inf")
    assert not all_finite(t)
    t[4] = float("-inf")
    assert not all_finite(t)
