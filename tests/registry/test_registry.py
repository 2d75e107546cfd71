"""The component registry: registering, listing, looking up, building from specs, entry points, errors."""

from importlib import metadata

import normflows as nf
import pytest
import torch
from torch import nn

import flowplug
from flowplug import registry
from flowplug.conditioning import run_inverse


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made in a test vanish after it."""
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))


def test_flowplug_and_normflows_components_are_listed():
    names = flowplug.components()
    assert {"haar_squeeze", "haar_merge", "haar_split"} <= set(names)
    normflows_layers = {"glow_block", "affine_coupling_block", "act_norm", "invertible_1x1_conv", "squeeze", "split"}
    assert normflows_layers <= set(names)
    assert names == sorted(names)
    assert "diag_gaussian" in flowplug.components(kind="distribution")
    assert "diag_gaussian" not in flowplug.components(kind="flow")
    assert flowplug.get_component("glow_block").source == "normflows"
    assert flowplug.get_component("haar_squeeze").factory is flowplug.HaarSqueeze


def test_register_decorator_and_function_form(scratch_registry):
    @flowplug.register("my_identity")
    class MyIdentity(nf.flows.Flow):
        """Does nothing, twice."""

        def forward(self, z):
            return z, torch.zeros(z.shape[0])

        inverse = forward

    flowplug.register("my_identity_factory", lambda: MyIdentity())
    assert isinstance(flowplug.build("my_identity"), MyIdentity)
    assert isinstance(flowplug.build({"type": "my_identity_factory"}), MyIdentity)
    assert flowplug.get_component("my_identity").summary == "Does nothing, twice."
    with pytest.raises(ValueError, match="'my_identity' is already registered"):
        flowplug.register("my_identity", lambda: None)
    flowplug.register("my_identity", lambda: None, overwrite=True)
    with pytest.raises(ValueError, match="unknown component kind 'layer'"):
        flowplug.register("x", lambda: None, kind="layer")


def build_in_code():
    torch.manual_seed(3)
    # listed in the sampling direction (latent → data), as normflows does
    return [
        nf.flows.GlowBlock(16, 8, split_mode="checkerboard", scale_map="exp"),
        flowplug.HaarSqueeze(),
        nf.flows.GlowBlock(4, 8, split_mode="channel"),
        nf.flows.ActNorm((4, 1, 1)),
    ]


SPEC = [
    {"type": "glow_block", "channels": 16, "hidden_channels": 8, "split_mode": "checkerboard", "scale_map": "exp"},
    "haar_squeeze",
    {"type": "glow_block", "channels": 4, "hidden_channels": 8, "split_mode": "channel"},
    {"type": "act_norm", "shape": [4, 1, 1]},
]


def test_spec_builds_the_same_model_as_code():
    in_code = build_in_code()
    torch.manual_seed(3)
    from_spec = flowplug.build(SPEC)
    assert [type(m) for m in from_spec] == [type(m) for m in in_code]
    code_state = nn.ModuleList(in_code).state_dict()
    spec_state = nn.ModuleList(from_spec).state_dict()
    assert code_state.keys() == spec_state.keys()
    for key in code_state:
        assert torch.equal(code_state[key], spec_state[key]), key
    x = torch.rand(3, 4, 8, 8)
    z_code, ld_code = run_inverse(in_code, x)
    z_spec, ld_spec = run_inverse(from_spec, x)
    assert torch.equal(z_code, z_spec) and torch.equal(ld_code, ld_spec)


def test_nested_specs_are_built_first(scratch_registry):
    @flowplug.register("wrapper")
    class Wrapper(nn.Module):
        def __init__(self, inner, layers):
            super().__init__()
            self.inner, self.layers = inner, nn.ModuleList(layers)

    built = flowplug.build({"type": "wrapper", "inner": "haar_squeeze", "layers": [{"type": "haar_merge"}]})
    # a plain string argument stays a string; dicts with "type" and lists of them become modules
    assert built.inner == "haar_squeeze"
    assert isinstance(built.layers[0], flowplug.HaarMerge)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match=r"unknown component 'glow_blok'; did you mean 'glow_block'"):
        flowplug.build({"type": "glow_blok"})
    with pytest.raises(ValueError, match=r"unknown component 'zzz' \(`flowplug info` or flowplug.components\(\) "
                       r"lists all; "
                       r"a custom one must be registered .*flowplug.register"):
        flowplug.get_component("zzz")


def test_bad_spec_keys_are_named():
    with pytest.raises(TypeError, match=r"'glow_block' has no parameter 'channel'; did you mean 'channels'\?"):
        flowplug.build({"type": "glow_block", "channel": 4, "hidden_channels": 8})
    with pytest.raises(TypeError, match=r"'glow_block' is missing required parameter\(s\) hidden_channels"):
        flowplug.build({"type": "glow_block", "channels": 4})
    with pytest.raises(ValueError, match="has no 'type' key"):
        flowplug.build({"channels": 4})
    with pytest.raises(TypeError, match=r"a spec must be a component name, a dict .* got int"):
        flowplug.build(3)


def test_entry_point_components_are_loaded_lazily(monkeypatch, scratch_registry):
    entry_point = metadata.EntryPoint(
        name="third_party_squeeze", value="flowplug.wavelet:HaarSqueeze", group=registry.ENTRY_POINT_GROUP
    )

    real_entry_points = registry.metadata.entry_points

    def fake_entry_points(group):
        return [entry_point] if group == registry.ENTRY_POINT_GROUP else real_entry_points(group=group)

    monkeypatch.setattr(registry.metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(registry, "_external_loaded", False)
    assert "third_party_squeeze" in flowplug.components()
    assert flowplug.get_component("third_party_squeeze").source.startswith("entry point flowplug.wavelet:HaarSqueeze")
    assert isinstance(flowplug.build("third_party_squeeze"), flowplug.HaarSqueeze)


def test_the_builtins_come_through_the_plugin_entry_point_and_the_registry_imports_nothing_of_flowplug(
        monkeypatch, scratch_registry):
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(registry))
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [name for name in imported if name and name.startswith("flowplug")]
    plugins = {ep.name: ep.value for ep in metadata.entry_points(group=registry.PLUGIN_GROUP)}
    assert plugins["flowplug"] == "flowplug.builtins:register_builtins"
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [])
    monkeypatch.setattr(registry, "_external_loaded", False)
    with pytest.raises(ImportError, match=r"'flowplug\.plugins' entry point, which is missing: install the package"):
        flowplug.components()


def test_build_records_the_spec_on_the_module():
    spec = {"type": "glow_block", "channels": 2, "hidden_channels": 4, "split_mode": "checkerboard"}
    block = flowplug.build(spec)
    assert block.config == spec and block.config is not spec
    assert flowplug.build("haar_squeeze").config == {"type": "haar_squeeze"}
    model = flowplug.build({"type": "glow", "image_shape": [1, 8, 8], "levels": 1, "depth": 1})
    assert model.config["type"] == "glow" and model.config["hidden_channels"] == 64  # the model's own record
