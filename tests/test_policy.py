"""Tests for tvm_mpq.policy: validation, resolution and the versioned JSON form."""

from __future__ import annotations

import json
import os
import tempfile
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_mpq.policy import (
    FLOAT_BITS,
    FLOAT_LAYER,
    POLICY_VERSION,
    ChannelGroup,
    LayerBits,
    QuantPolicy,
)


def _layer(name, out_channels, supported=True, kind="conv2d"):
    return SimpleNamespace(name=name, out_channels=out_channels, supported=supported, kind=kind)


@pytest.fixture
def net():
    return SimpleNamespace(
        layers=[
            _layer("conv1", 16),
            _layer("layer1.0.conv1", 64),
            _layer("layer1.0.conv2", 64),
            _layer("up", 32, supported=False, kind="conv2d_transpose"),
            _layer("fc", 10, kind="dense"),
        ]
    )


G = ChannelGroup


# --------------------------------------------------------------------- LayerBits
def test_layer_bits_basic():
    q = LayerBits(4, 4)
    assert not q.is_float
    assert q.mean_w_bits(8) == 4.0
    np.testing.assert_array_equal(q.channel_bits(3), [4, 4, 4])
    assert FLOAT_LAYER.is_float and FLOAT_LAYER == LayerBits(FLOAT_BITS, FLOAT_BITS)
    np.testing.assert_array_equal(FLOAT_LAYER.channel_bits(2), [32, 32])


def test_layer_bits_groups():
    b = LayerBits(a_bits=4, groups=(G(0, 2, 2), G(2, 6, 8)))
    np.testing.assert_array_equal(b.channel_bits(6), [2, 2, 8, 8, 8, 8])
    assert b.mean_w_bits(6) == pytest.approx((2 * 2 + 4 * 8) / 6)
    assert not b.is_float
    with pytest.raises(ValueError, match="make the last group end at 8"):
        b.channel_bits(8)
    # kernels: adjacent groups of one width run as one kernel
    assert b.runs(6) == [(0, 2, 2), (2, 6, 8)]
    assert LayerBits(a_bits=4, groups=(G(0, 2, 3), G(2, 4, 3), G(4, 6, 1), G(6, 8, 3))).runs(8) == [(0, 4, 3), (4, 6, 1), (6, 8, 3)]
    assert LayerBits(5, 4).runs(6) == [(0, 6, 5)]
    # a list is accepted and stored as a tuple (hashable)
    assert LayerBits(a_bits=4, groups=[G(0, 2, 2)]).groups == (G(0, 2, 2),)
    hash(b)


@pytest.mark.parametrize("bad", [0, 9, 33, -1, 16, True, "4", 4.0, None])
def test_bad_w_bits(bad):
    with pytest.raises(ValueError, match="w_bits"):
        LayerBits(bad, 4)


@pytest.mark.parametrize("bad", [0, 9, 33, True, "4", 2.5])
def test_bad_a_bits(bad):
    with pytest.raises(ValueError, match="a_bits"):
        LayerBits(4, bad)


def test_bad_bits_message_says_fix():
    with pytest.raises(ValueError, match=r"w_bits=9 is out of range: use 1\.\.8 .* or 32"):
        LayerBits(9, 4)


@pytest.mark.parametrize("w, a", [(4, 32), (32, 8)])
def test_mixed_float_quant(w, a):
    with pytest.raises(ValueError, match="or both to 32 to keep it float"):
        LayerBits(w, a)


def test_groups_with_float_activations():
    with pytest.raises(ValueError, match="a_bits"):
        LayerBits(a_bits=32, groups=(G(0, 4, 4),))


def test_both_w_bits_and_groups():
    with pytest.raises(ValueError, match="both w_bits=4 and groups"):
        LayerBits(4, 4, groups=(G(0, 4, 4),))


def test_neither_w_bits_nor_groups():
    with pytest.raises(ValueError, match="w_bits is missing"):
        LayerBits(a_bits=4)


def test_groups_overlap():
    with pytest.raises(ValueError, match="overlap"):
        LayerBits(a_bits=4, groups=(G(0, 8, 4), G(4, 16, 2)))


def test_groups_gap():
    with pytest.raises(ValueError, match=r"gap at channels \[8, 10\)"):
        LayerBits(a_bits=4, groups=(G(0, 8, 4), G(10, 16, 2)))


def test_groups_not_at_zero():
    with pytest.raises(ValueError, match="start at channel 0"):
        LayerBits(a_bits=4, groups=(G(2, 8, 4),))


def test_groups_unsorted():
    with pytest.raises(ValueError, match="sorted"):
        LayerBits(a_bits=4, groups=(G(8, 16, 4), G(0, 8, 4)))


@pytest.mark.parametrize(
    "args, match",
    [
        ((4, 4, 4), "empty"),
        ((4, 2, 4), "empty"),
        ((-1, 4, 4), "negative"),
        ((0, 4, 32), "group w_bits=32"),
        ((0, 4, 0), "group w_bits=0"),
        ((0, True, 4), "stop"),
    ],
)
def test_bad_channel_group(args, match):
    with pytest.raises(ValueError, match=match):
        ChannelGroup(*args)


def test_groups_must_be_channel_groups():
    with pytest.raises(ValueError, match="ChannelGroup"):
        LayerBits(a_bits=4, groups=({"channels": [0, 4], "w_bits": 4},))


def test_layer_bits_dict_forms():
    assert LayerBits(4, 4).to_dict() == {"w_bits": 4, "a_bits": 4}
    grouped = LayerBits(a_bits=4, groups=(G(0, 32, 2), G(32, 64, 4)))
    d = grouped.to_dict()
    assert d == {
        "a_bits": 4,
        "groups": [{"channels": [0, 32], "w_bits": 2}, {"channels": [32, 64], "w_bits": 4}],
    }
    assert LayerBits.from_dict(d) == grouped
    assert LayerBits.from_dict({"w_bits": 32, "a_bits": 32}).is_float


@pytest.mark.parametrize(
    "d, match",
    [
        ({"w_bits": 4, "a_bits": 4, "bits": 3}, "unknown key.*'bits'"),
        ({"w_bits": 4}, "a_bits is missing"),
        ({"w_bits": "4", "a_bits": 4}, "w_bits='4' must be an integer"),
        ({"a_bits": 4, "groups": {"channels": [0, 4]}}, "groups=.*must be a list"),
        ({"a_bits": 4, "groups": []}, "empty list"),
        ({"a_bits": 4, "groups": [{"channels": [0, 4]}]}, "missing 'w_bits'"),
        ({"a_bits": 4, "groups": [{"channels": [0, 4], "w_bits": 4, "x": 1}]}, "'x'"),
        ({"a_bits": 4, "groups": [{"channels": 4, "w_bits": 4}]}, r"\[start, stop\]"),
        ({"a_bits": 4, "groups": [[0, 4, 4]]}, "channel group must be an object"),
        ([4, 4], "must be an object"),
    ],
)
def test_layer_bits_from_dict_errors(d, match):
    with pytest.raises(ValueError, match=match):
        LayerBits.from_dict(d)


# ------------------------------------------------------------------- QuantPolicy
def test_policy_is_immutable_and_comparable():
    p = QuantPolicy({"a": LayerBits(4, 4)}, default=LayerBits(8, 8))
    with pytest.raises(TypeError):
        p.layers["b"] = LayerBits(2, 2)  # type: ignore[index]
    with pytest.raises(AttributeError):
        p._default = None  # type: ignore[misc]
    q = p.with_layer("b", LayerBits(2, 2))
    assert "b" not in p and "b" in q
    assert q != p
    assert q.with_layer("b", {"w_bits": 2, "a_bits": 2}) == q
    assert hash(q) == hash(QuantPolicy(dict(q.layers), LayerBits(8, 8)))
    assert "QuantPolicy(" in repr(p) and "'a'" in repr(p)
    assert p.with_default(None).default is None


def test_policy_accepts_dict_values_and_prefixes_errors():
    p = QuantPolicy({"conv1": {"w_bits": 4, "a_bits": 4}})
    assert p.layers["conv1"] == LayerBits(4, 4)
    with pytest.raises(ValueError, match=r"layer 'layer1\.0\.conv1': w_bits=9 is out of range"):
        QuantPolicy({"layer1.0.conv1": {"w_bits": 9, "a_bits": 4}})
    with pytest.raises(ValueError, match="default: w_bits=4 with a_bits=32"):
        QuantPolicy({}, default={"w_bits": 4, "a_bits": 32})
    with pytest.raises(ValueError, match="layer 'x': expected LayerBits"):
        QuantPolicy({"x": 4})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="reserved"):
        QuantPolicy({"_default": LayerBits(4, 4)})
    with pytest.raises(ValueError, match="non-empty string"):
        QuantPolicy({"": LayerBits(4, 4)})


def test_uniform_from_net(net):
    p = QuantPolicy.uniform(net, 4, 4)
    assert set(p.layers) == {"conv1", "layer1.0.conv1", "layer1.0.conv2", "fc"}
    assert all(b == LayerBits(4, 4) for b in p.layers.values())
    p.validate(net)


def test_uniform_keep_first_last(net):
    p = QuantPolicy.uniform(net, 2, 2, keep_first_last=8)
    assert p.layers["conv1"] == LayerBits(8, 8)
    assert p.layers["fc"] == LayerBits(8, 8)
    assert p.layers["layer1.0.conv1"] == LayerBits(2, 2)
    assert "up" not in p.layers  # unsupported layers stay float
    assert p.resolve([l.name for l in net.layers])["up"].is_float


def test_uniform_from_names():
    p = QuantPolicy.uniform(["a", "b", "c"], 3, 5, keep_first_last=32)
    assert p.layers["a"].is_float and p.layers["c"].is_float
    assert p.layers["b"] == LayerBits(3, 5)
    with pytest.raises(ValueError, match="w_bits=9"):
        QuantPolicy.uniform(["a"], 9, 4)
    with pytest.raises(ValueError, match="single string"):
        QuantPolicy.uniform("abc", 4, 4)


def test_resolve_with_default(net):
    names = [l.name for l in net.layers]
    p = QuantPolicy({"conv1": LayerBits(8, 8)}, default=LayerBits(4, 4))
    r = p.resolve(names)
    assert list(r) == names
    assert r["conv1"] == LayerBits(8, 8)
    assert r["layer1.0.conv2"] == LayerBits(4, 4)
    assert r["up"] == LayerBits(4, 4)  # without `supported` everything takes the default
    supported = {l.name: l.supported for l in net.layers}
    r = p.resolve(names, supported)
    assert r["up"].is_float and r["fc"] == LayerBits(4, 4)
    # no default -> unnamed layers stay float
    r = QuantPolicy({"conv1": LayerBits(8, 8)}).resolve(names)
    assert r["fc"].is_float


def test_resolve_unknown_layer(net):
    names = [l.name for l in net.layers]
    p = QuantPolicy({"layer1.0.conv3": LayerBits(4, 4)})
    with pytest.raises(ValueError) as exc:
        p.resolve(names)
    msg = str(exc.value)
    assert "unknown layer 'layer1.0.conv3'" in msg
    assert "(did you mean 'layer1.0.conv2', 'layer1.0.conv1'?)" in msg
    assert "known layers: conv1, layer1.0.conv1" in msg
    assert "tvm-mpq layers MODEL" in msg
    with pytest.raises(ValueError, match="unknown layer 'layer1.0.conv3'"):
        p.validate(net)


def test_validate_groups_cover_out_channels(net):
    ok = LayerBits(a_bits=4, groups=(G(0, 32, 2), G(32, 64, 4)))
    QuantPolicy({"layer1.0.conv1": ok}).validate(net)
    short = LayerBits(a_bits=4, groups=(G(0, 32, 2), G(32, 48, 4)))
    with pytest.raises(ValueError, match=r"layer 'layer1\.0\.conv1'.*end at 64"):
        QuantPolicy({"layer1.0.conv1": short}).validate(net)
    # a grouped default that does not fit some layer is reported with its source
    with pytest.raises(ValueError, match=r"layer 'conv1' \(from the default\).*end at 16"):
        QuantPolicy({}, default=ok).validate(net)


def test_validate_unsupported_layer(net):
    p = QuantPolicy({"up": LayerBits(4, 4)})
    with pytest.raises(ValueError, match=r"layer 'up' \(kind 'conv2d_transpose'\) is not supported"):
        p.validate(net)
    with pytest.raises(ValueError, match="layer 'up' is not supported"):
        p.resolve([l.name for l in net.layers], {l.name: l.supported for l in net.layers})
    # float is fine, and a default simply skips it
    QuantPolicy({"up": FLOAT_LAYER}).validate(net)
    r = QuantPolicy({}, default=LayerBits(4, 4)).validate(net)
    assert r["up"].is_float and r["conv1"] == LayerBits(4, 4)


# ----------------------------------------------------------------------- JSON
def _example_policy():
    return QuantPolicy(
        {
            "conv1": LayerBits(8, 8),
            "layer1.0.conv1": LayerBits(a_bits=4, groups=(G(0, 32, 2), G(32, 64, 4))),
            "fc": FLOAT_LAYER,
        },
        default=LayerBits(4, 4),
    )


def test_dict_round_trip():
    p = _example_policy()
    d = p.to_dict()
    assert d["version"] == POLICY_VERSION
    assert d["_default"] == {"w_bits": 4, "a_bits": 4}
    assert d["layers"]["fc"] == {"w_bits": 32, "a_bits": 32}
    assert QuantPolicy.from_dict(d) == p
    assert "_default" not in QuantPolicy({"a": LayerBits(2, 2)}).to_dict()


def test_save_load_round_trip(tmp_path):
    p = _example_policy()
    path = tmp_path / "policy.json"
    p.save(path)
    text = path.read_text()
    assert text.startswith('{\n  "_default"')  # indent=2, sorted keys
    assert json.loads(text) == p.to_dict()
    assert QuantPolicy.load(path) == p
    assert QuantPolicy.load(str(path)) == p


def test_load_malformed_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "version": 1,\n  "layers": {,}\n}\n')
    with pytest.raises(ValueError, match=r"bad\.json.*not valid JSON.*line 3, column 14"):
        QuantPolicy.load(path)


def test_load_prefixes_path_and_layer(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"version": 1, "layers": {"layer1.0.conv1": {"w_bits": 9, "a_bits": 4}}}))
    with pytest.raises(ValueError, match=r"p\.json.*layer 'layer1\.0\.conv1': w_bits=9 is out of range"):
        QuantPolicy.load(path)


@pytest.mark.parametrize(
    "d, match",
    [
        ({"layers": {}}, "no 'version'.*reads policy version 1"),
        ({"version": 2, "layers": {}}, "version 2 is not supported.*reads policy version 1"),
        ({"version": "1", "layers": {}}, "version '1' is not supported"),
        ({"version": True, "layers": {}}, "version True is not supported"),
        ({"version": 1}, "no 'layers'"),
        ({"version": 1, "layers": []}, "'layers' must be an object"),
        ({"version": 1, "layers": {}, "default": {}}, "unknown top-level key.*'default'"),
        ({"version": 1, "layers": {"a": {"w_bits": 4, "a_bits": 4, "g": 1}}}, "layer 'a': unknown key"),
        ({"version": 1, "layers": {"a": {"w_bits": True, "a_bits": 4}}}, "layer 'a': w_bits=True"),
        ({"version": 1, "layers": {"a": {"w_bits": 0, "a_bits": 4}}}, "layer 'a': w_bits=0"),
        ({"version": 1, "layers": {"a": {"w_bits": 4, "a_bits": 33}}}, "layer 'a': a_bits=33"),
        ({"version": 1, "layers": {"a": "4/4"}}, "layer 'a': expected LayerBits or a dict"),
        (
            {"version": 1, "layers": {"a": {"w_bits": 4, "a_bits": 4, "groups": [{"channels": [0, 4], "w_bits": 4}]}}},
            "layer 'a': both w_bits=4 and groups",
        ),
        ({"version": 1, "layers": {}, "_default": {"w_bits": 4}}, "default: a_bits is missing"),
        ([1], "must be a JSON object"),
    ],
)
def test_from_dict_errors(d, match):
    with pytest.raises(ValueError, match=match):
        QuantPolicy.from_dict(d)


# ------------------------------------------------------------------ properties
_bits = st.one_of(st.integers(1, 8))


@st.composite
def _layer_bits(draw):
    kind = draw(st.sampled_from(["float", "uniform", "groups"]))
    if kind == "float":
        return FLOAT_LAYER
    if kind == "uniform":
        return LayerBits(draw(_bits), draw(_bits))
    sizes = draw(st.lists(st.integers(1, 16), min_size=1, max_size=5))
    groups, start = [], 0
    for size in sizes:
        groups.append(ChannelGroup(start, start + size, draw(_bits)))
        start += size
    return LayerBits(a_bits=draw(_bits), groups=tuple(groups))


_names = st.text(
    alphabet=st.sampled_from("abcdefxyz0123._"), min_size=1, max_size=12
).filter(lambda s: s != "_default")


@st.composite
def _policies(draw):
    layers = draw(st.dictionaries(_names, _layer_bits(), max_size=6))
    default = draw(st.one_of(st.none(), _layer_bits()))
    return QuantPolicy(layers, default)


@settings(max_examples=60, deadline=None)
@given(_policies())
def test_property_json_round_trip(policy):
    assert QuantPolicy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "p.json")
        policy.save(path)
        assert QuantPolicy.load(path) == policy


_invalid_bits = st.one_of(
    st.integers().filter(lambda b: not (1 <= b <= 8 or b == 32)),
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.none(),
)


@settings(max_examples=60, deadline=None)
@given(bad=_invalid_bits, good=_bits, which=st.sampled_from(["w", "a", "group"]))
def test_property_invalid_bits_raise(bad, good, which):
    with pytest.raises(ValueError):
        if which == "w":
            LayerBits(bad, good)
        elif which == "a":
            LayerBits(good, bad)
        else:
            LayerBits(a_bits=good, groups=(ChannelGroup(0, 4, bad),))
    with pytest.raises(ValueError, match="layer 'x'"):
        QuantPolicy.from_dict({"version": 1, "layers": {"x": {"w_bits": bad, "a_bits": good}}})


# ------------------------------------------------- policies against a layer table
def test_unknown_layers_are_all_listed(net):
    p = QuantPolicy({"conv1": LayerBits(4, 4), "layer1.0.conv3": LayerBits(4, 4), "layer1.0.conv2": LayerBits(4, 4),
                     "fc2": LayerBits(8, 8)})
    with pytest.raises(ValueError) as exc:
        p.validate(net)
    msg = str(exc.value)
    assert "unknown layers (2 of the policy's 4 layers)" in msg
    assert "'layer1.0.conv3' (did you mean" in msg and "'fc2'" in msg
    assert "another model" not in msg  # most names are right: typos, not a foreign policy


def test_policy_made_for_another_model(net):
    # digits_cnn's layer names ("features.0", ...) against a ResNet-like layer table
    foreign = QuantPolicy.uniform(["features.0", "features.3", "features.6", "features.9", "fc"], 4, 4)
    with pytest.raises(ValueError) as exc:
        foreign.validate(net)
    msg = str(exc.value)
    assert "this policy looks made for another model: 4 of the policy's 5 layers are not layers of this model" in msg
    assert "'features.0'" in msg
    assert "its layer names match the built-in model 'digits_cnn' (5 of 5)" in msg
    assert "Validate it against the model it was made for, or make one for this model" in msg
    assert "known layers: conv1, layer1.0.conv1" in msg
    # the same through resolve() (what search and the passes call)
    with pytest.raises(ValueError, match="another model"):
        foreign.resolve([l.name for l in net.layers])


def test_policy_for_an_unregistered_model_has_no_guess(net):
    with pytest.raises(ValueError) as exc:
        QuantPolicy.uniform(["enc.a", "enc.b", "dec.a"], 4, 4).validate(net)
    assert "another model: 3 of the policy's 3 layers" in str(exc.value)
    assert "built-in model" not in str(exc.value)


def test_unsupported_layer_error_gives_the_reason():
    layer = SimpleNamespace(name="big", out_channels=4, supported=False, kind="dense",
                            unsupported_reason="reduction length 20000 exceeds 16384")
    with pytest.raises(ValueError, match=r"layer 'big' \(kind 'dense'\) is not supported by the quantized kernels "
                                         r"\(reduction length 20000 exceeds 16384\): set it to float"):
        QuantPolicy({"big": LayerBits(8, 8)}).validate(SimpleNamespace(layers=[layer]))


_layer_names = st.lists(
    st.text(alphabet=st.sampled_from("abcxyz0123."), min_size=1, max_size=8).filter(lambda s: s != "_default"),
    min_size=1, max_size=6, unique=True,
)


@st.composite
def _tables(draw):
    """A random layer table (the fields validate() reads)."""
    names = draw(_layer_names)
    return SimpleNamespace(layers=[
        _layer(n, draw(st.integers(1, 64)), supported=draw(st.booleans() | st.just(True)), kind=draw(st.sampled_from(["conv2d", "dense"])))
        for n in names
    ])


@st.composite
def _bits_for(draw, out_channels):
    """Valid bits for a layer of ``out_channels`` channels (groups that exactly cover them)."""
    kind = draw(st.sampled_from(["float", "uniform", "groups"]))
    if kind == "float":
        return FLOAT_LAYER
    if kind == "uniform" or out_channels == 1:
        return LayerBits(draw(_bits), draw(_bits))
    cuts = sorted(draw(st.sets(st.integers(1, out_channels - 1), max_size=4)))
    edges = [0, *cuts, out_channels]
    return LayerBits(a_bits=draw(_bits), groups=tuple(G(a, b, draw(_bits)) for a, b in zip(edges, edges[1:])))


@st.composite
def _valid_cases(draw):
    table = draw(_tables())
    layers = {}
    for layer in table.layers:
        if draw(st.booleans()):
            layers[layer.name] = draw(_bits_for(layer.out_channels)) if layer.supported else FLOAT_LAYER
    default = draw(st.one_of(st.none(), st.just(FLOAT_LAYER), st.builds(LayerBits, _bits, _bits)))
    return table, QuantPolicy(layers, default)


@settings(max_examples=80, deadline=None)
@given(_valid_cases())
def test_property_valid_policies_validate_and_round_trip(case):
    table, policy = case
    resolved = policy.validate(table)
    assert list(resolved) == [l.name for l in table.layers]
    for layer in table.layers:
        bits = resolved[layer.name]
        assert bits.is_float or layer.supported  # a default never quantizes an unsupported layer
        assert bits.channel_bits(layer.out_channels).shape == (layer.out_channels,)
    again = QuantPolicy.from_dict(json.loads(json.dumps(policy.to_dict())))
    assert again == policy and again.validate(table) == resolved
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "p.json")
        policy.save(path)
        assert QuantPolicy.load(path).validate(table) == resolved


_MUTATIONS = ["unknown_layer", "w_bits", "a_bits", "group_bits", "overlap", "gap", "short", "unsupported", "version"]


@st.composite
def _invalid_cases(draw):
    """(policy as a JSON dict, layer table, mutation, offending layer): one fault in a valid policy."""
    table, policy = draw(_valid_cases())
    d = json.loads(json.dumps(policy.to_dict()))
    mutation = draw(st.sampled_from(_MUTATIONS))
    names = [l.name for l in table.layers]
    if mutation == "unknown_layer":
        name = draw(st.text(alphabet="klmnop_", min_size=2, max_size=6))  # not in the names alphabet
        d["layers"][name] = {"w_bits": 4, "a_bits": 4}
        return d, table, mutation, name
    if mutation == "version":
        d["version"] = draw(st.integers().filter(lambda v: v != POLICY_VERSION) | st.text(max_size=2) | st.none())
        return d, table, mutation, None
    candidates = [l for l in table.layers if l.supported and (mutation not in ("overlap", "gap", "short") or l.out_channels >= 2)]
    if mutation == "unsupported":
        candidates = [l for l in table.layers if not l.supported]
    if not candidates:  # nothing to break that way in this table: break the bits of any layer instead
        mutation, candidates = "w_bits", table.layers
    layer = draw(st.sampled_from(candidates))
    o, a = layer.out_channels, draw(_bits)
    bad_bits = draw(_invalid_bits.filter(lambda b: b is not None))
    entry = {
        "w_bits": {"w_bits": bad_bits, "a_bits": a},
        "a_bits": {"w_bits": a, "a_bits": bad_bits},
        "group_bits": {"a_bits": a, "groups": [{"channels": [0, o], "w_bits": bad_bits}]},
        "unsupported": {"w_bits": a, "a_bits": a},
    }.get(mutation)
    if mutation in ("overlap", "gap", "short"):
        cut = draw(st.integers(1, o - 1))
        second = {"overlap": [cut - 1, o], "gap": [cut + 1, o + 1], "short": [cut, o - 1 if o - 1 > cut else None]}[mutation]
        if second[1] is None:  # no room to end early: drop the last channel group instead
            groups = [{"channels": [0, cut], "w_bits": a}]
        else:
            groups = [{"channels": [0, cut], "w_bits": a}, {"channels": second, "w_bits": a}]
        entry = {"a_bits": a, "groups": groups}
    d["layers"][layer.name] = entry
    return d, table, mutation, layer.name


_FIELD = {
    "unknown_layer": "unknown layer", "w_bits": "w_bits", "a_bits": "a_bits", "group_bits": "group w_bits",
    "overlap": "overlap", "gap": "gap", "short": "end at", "unsupported": "not supported", "version": "version",
}


@settings(max_examples=150, deadline=None)
@given(_invalid_cases())
def test_property_invalid_policies_name_the_field_and_layer(case):
    d, table, mutation, layer = case
    with pytest.raises(ValueError) as exc:
        QuantPolicy.from_dict(d).validate(table)
    msg = str(exc.value)
    assert _FIELD[mutation] in msg, (mutation, msg)
    if layer is not None:
        assert repr(layer) in msg, (mutation, msg)
