"""Compression (peers.wire.compression): every codec round-trips through safetensors bytes within its
stated error bound; top-k with error feedback carries the residual; wire sizes shrink as stated."""

import json
import math

import pytest
import torch

from peers.wire import compression as C
from peers.wire.compression import decompress, from_bytes, get_compressor, to_bytes


def state(seed=0, n=20_000):
    g = torch.Generator().manual_seed(seed)
    # magnitudes over 6 decades, both signs, plus a small bias, an int buffer, a float64 tensor
    w = torch.randn(n, generator=g) * 10 ** (torch.rand(n, generator=g) * 6 - 3)
    return {
        "layer.weight": w.reshape(100, n // 100),
        "layer.bias": torch.randn(7, generator=g) * 1e-3,
        "bn.num_batches_tracked": torch.tensor(12345),
        "double": torch.randn(10, generator=g, dtype=torch.float64),
    }


def round_trip(spec, st):
    c = get_compressor(spec)
    payload, meta = c.compress(st)
    assert all(isinstance(v, str) for v in meta.values())
    data = to_bytes(payload, meta)
    assert c.wire_bytes(payload, meta) == len(data)
    p2, m2 = from_bytes(data)
    assert m2 == meta
    out = decompress(p2, m2)  # stateless, module level: what a receiver does
    assert set(out) == set(st)
    for k in st:
        assert out[k].shape == st[k].shape and out[k].dtype == st[k].dtype, k
    assert torch.equal(out["bn.num_batches_tracked"], st["bn.num_batches_tracked"])  # raw, always exact
    return c, payload, out


def test_none_is_exact():
    st = state()
    _, _, out = round_trip("none", st)
    for k in st:
        assert torch.equal(out[k], st[k])


@pytest.mark.parametrize(("spec", "rel", "absolute"), [("fp16", 2**-11, 2**-25), ("bf16", 2**-8, 0.0)])
def test_half_precision_within_stated_bound(spec, rel, absolute):
    st = state()
    _, payload, out = round_trip(spec, st)
    for k in ("layer.weight", "layer.bias", "double"):
        x, y = st[k].double(), out[k].double()
        err = (y - x).abs()
        assert bool((err <= rel * x.abs() + absolute).all()), (spec, k, float((err - rel * x.abs()).max()))
        assert float(err.max()) > 0  # lossy indeed: the test would catch a codec that sent float32
    assert payload["v/layer.weight"].dtype == (torch.float16 if spec == "fp16" else torch.bfloat16)


def test_fp16_refuses_out_of_range_and_everyone_refuses_nonfinite():
    with pytest.raises(ValueError, match="65504"):
        get_compressor("fp16").compress({"x": torch.tensor([1e5])})
    get_compressor("bf16").compress({"x": torch.tensor([1e30])})  # bf16 has float32's range
    for spec in ("none", "fp16", "bf16", "int8", "int8:affine", "topk:0.5"):
        with pytest.raises(ValueError, match="non-finite"):
            get_compressor(spec).compress({"x": torch.tensor([1.0, float("nan")])})


@pytest.mark.parametrize("spec", ["int8", "int8:affine"])
def test_int8_max_error_at_most_half_a_step(spec):
    st = state()
    st["shifted"] = torch.rand(5000, generator=torch.Generator().manual_seed(3)) * 4 + 10  # all positive: affine shines
    c, payload, out = round_trip(spec, st)
    for k in ("layer.weight", "layer.bias", "shifted"):
        x = st[k].double()
        scale = c.scale_of(payload, k)
        if spec == "int8":
            assert scale == pytest.approx(float(x.abs().max()) / 127, rel=1e-6)
        else:
            assert scale == pytest.approx(float(x.max() - x.min()) / 255, rel=1e-6)
        err = float((out[k].double() - x).abs().max())
        assert err <= scale / 2 + 1e-6 * float(x.abs().max()), (k, err, scale)
        assert err > scale / 4  # and it really quantised
    assert payload["v/layer.weight"].dtype == (torch.int8 if spec == "int8" else torch.uint8)
    # affine uses the whole range: on positive data its step is ~ half the symmetric one
    if spec == "int8:affine":
        sym_payload, _ = get_compressor("int8").compress({"shifted": st["shifted"]})
        assert c.scale_of(payload, "shifted") < 0.45 * float(sym_payload["s/shifted"])


def test_int8_constant_and_zero_tensors_are_exact():
    for spec in ("int8", "int8:affine"):
        st = {"z": torch.zeros(10), "c": torch.full((4,), -2.5), "e": torch.zeros(0)}
        _, _, out = round_trip(spec, {**st, "bn.num_batches_tracked": torch.tensor(1)})
        for k in st:
            assert torch.equal(out[k], st[k]), (spec, k)


def test_topk_keeps_exactly_the_largest_coordinates():
    st = state()
    c, payload, out = round_trip("topk:0.01", st)
    x, y = st["layer.weight"].reshape(-1), out["layer.weight"].reshape(-1)
    kept = y != 0
    assert int(kept.sum()) == math.ceil(0.01 * x.numel()) == payload["v/layer.weight"].numel()
    assert torch.equal(y[kept], x[kept])  # exact on kept coordinates
    assert float(x[kept].abs().min()) >= float(x[~kept].abs().max())  # and they are the largest
    assert payload["i/layer.weight"].dtype == torch.int32 and payload["v/layer.weight"].dtype == torch.float32
    assert out["layer.bias"].count_nonzero() == 1  # ceil(0.01 * 7) = 1
    # what was not sent is the residual, kept per tensor name
    torch.testing.assert_close(c.residual["layer.weight"] + y, x, rtol=0, atol=0)


@pytest.mark.parametrize("feedback", [True, False])
def test_topk_error_feedback_sum_converges(feedback):
    """Over many rounds the decoded updates add up to the originals (residual carried); without
    error feedback the small coordinates are never sent and the sums stay far apart."""
    g = torch.Generator().manual_seed(5)
    drift = torch.randn(4000, generator=g)  # a consistent direction, as gradients have
    c = C.TopK(0.02, error_feedback=feedback)
    sent = torch.zeros(4000, dtype=torch.float64)
    true = torch.zeros(4000, dtype=torch.float64)
    errors, residual_norms = [], []
    for t in range(300):
        x = drift + 0.5 * torch.randn(4000, generator=g)
        payload, meta = c.compress({"g": x})
        sent += decompress(payload, meta)["g"].double()
        true += x.double()
        errors.append(float((sent - true).norm() / true.norm()))
        if feedback:  # the invariant: sum(decoded) + residual == sum(inputs), up to float32 rounding
            torch.testing.assert_close(sent + c.residual["g"].double(), true, rtol=0, atol=1e-3 * (t + 1) ** 0.5)
            residual_norms.append(float(c.residual["g"].norm()))
    if feedback:
        # the residual stops growing (~1/k rounds to flush), so the relative error falls like 1/t
        assert max(residual_norms[150:]) < 1.5 * max(residual_norms[:150])
        assert errors[-1] < 0.1 and errors[-1] < errors[29] / 5
        c.reset()
        assert c.residual == {}
    else:
        assert errors[-1] > 0.5 and c.residual == {}


def test_wire_bytes_shrink_by_the_expected_factor():
    st = {"w": torch.randn(1000, 1000)}
    size = {
        spec: get_compressor(spec).wire_bytes(*get_compressor(spec).compress(st))
        for spec in ("none", "fp16", "bf16", "int8", "int8:affine", "topk:0.01", "topk:0.1")
    }
    dense = 4 * 1_000_000
    assert dense <= size["none"] < dense + 1000
    assert size["fp16"] / size["none"] == pytest.approx(0.5, abs=0.001)
    assert size["bf16"] / size["none"] == pytest.approx(0.5, abs=0.001)
    assert size["int8"] / size["none"] == pytest.approx(0.25, abs=0.001)
    assert size["int8:affine"] / size["none"] == pytest.approx(0.25, abs=0.001)
    assert size["topk:0.01"] / size["none"] == pytest.approx(0.02, abs=0.001)  # 4 B value + 4 B index per kept
    assert size["topk:0.1"] / size["none"] == pytest.approx(0.2, abs=0.001)


def test_get_compressor_parses_and_rejects():
    assert get_compressor("none").spec == "none"
    assert get_compressor(" FP16 ").spec == "fp16"
    assert get_compressor("int8").spec == "int8" and not get_compressor("int8").affine
    assert get_compressor("int8:affine").affine
    assert get_compressor("topk:0.01").fraction == 0.01 and get_compressor("topk:1").fraction == 1.0
    for bad in ("zip", "topk", "topk:", "topk:abc", "topk:0", "topk:-0.1", "topk:1.5", "topk:nan", "int4", ""):
        with pytest.raises(ValueError, match=r"topk|unknown compressor"):
            get_compressor(bad)
    with pytest.raises(ValueError, match="expected one of: none, fp16, bf16, int8"):
        get_compressor("gzip")
    with pytest.raises(ValueError, match="string"):
        get_compressor(None)


def test_decompress_rejects_malformed_payloads():
    st = {"w": torch.randn(50), "n": torch.tensor(3)}
    payload, meta = get_compressor("topk:0.1").compress(st)
    bad = dict(payload, **{"i/w": torch.tensor([0, 1, 2, 3, 50], dtype=torch.int32)})
    with pytest.raises(ValueError, match="index out of range"):
        decompress(bad, meta)
    with pytest.raises(ValueError, match="missing"):
        decompress({k: v for k, v in payload.items() if k != "v/w"}, meta)
    with pytest.raises(ValueError, match="unexpected payload entries"):
        decompress(dict(payload, extra=torch.zeros(1)), meta)
    with pytest.raises(ValueError, match="not 'fp16'"):
        get_compressor("fp16").decompress(payload, meta)
    with pytest.raises(ValueError, match="no 'compressor'"):
        decompress(payload, {"layout": meta["layout"]})
    with pytest.raises(ValueError, match="layout"):
        decompress(payload, {"compressor": meta["compressor"], "layout": "[1, 2"})
    p8, m8 = get_compressor("int8").compress(st)
    with pytest.raises(ValueError, match=r"expected torch\.int8"):
        decompress(dict(p8, **{"v/w": p8["v/w"].to(torch.int16)}), m8)
    with pytest.raises(ValueError, match="bad scale"):
        decompress(dict(p8, **{"s/w": torch.tensor(float("inf"))}), m8)
    with pytest.raises(ValueError, match="not a valid safetensors"):
        from_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    layout = json.loads(meta["layout"])
    assert layout == {"w": [[50], "float32"], "n": [[], "int64"]}


def test_topk_residual_is_per_name_and_shape_checked():
    c = get_compressor("topk:0.5")
    c.compress({"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([5.0, -6.0])})
    assert c.residual["a"].tolist() == [1.0, 2.0, 0.0, 0.0] and c.residual["b"].tolist() == [5.0, 0.0]
    payload, meta = c.compress({"a": torch.tensor([1.0, 0.0, 0.0, 0.0]), "b": torch.tensor([0.0, 0.0])})
    assert decompress(payload, meta)["a"].tolist() == [2.0, 2.0, 0.0, 0.0]  # residual added before top-k
    with pytest.raises(ValueError, match="changed size"):
        c.compress({"a": torch.zeros(5), "b": torch.zeros(2)})
