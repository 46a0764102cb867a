"""Site names, parsing, M membership and filters (maxact.sites)."""

import pytest

from maxact.sites import (
    COMPONENTS,
    LAYER_COMPONENTS,
    M_COMPONENTS,
    SiteSpec,
    counts_for_m,
    filter_sites,
    parse_site,
    site_name,
)


@pytest.mark.parametrize(
    "component, layer, module, name",
    [
        ("embedding", None, None, "embedding"),
        ("final_norm", None, None, "final_norm"),
        ("hidden", 0, None, "layers.0.hidden"),
        ("attn", 12, None, "layers.12.attn"),
        ("mlp", 3, None, "layers.3.mlp"),
        ("gate", 3, None, "layers.3.gate"),
        ("router", 47, None, "layers.47.router"),
        ("linear_input", None, "model.layers.3.mlp.up_proj", "model.layers.3.mlp.up_proj.input"),
        ("module", None, "layers.0.mlp", "layers.0.mlp.output"),
    ],
)
def test_site_name_and_parse_round_trip(component, layer, module, name):
    assert site_name(component, layer, module=module) == name
    parsed_component, parsed_layer = parse_site(name)
    assert parsed_component == component
    # module-derived names carry their layer in the module path
    expected_layer = {"model.layers.3.mlp.up_proj.input": 3, "layers.0.mlp.output": 0}.get(name, layer)
    assert parsed_layer == expected_layer


def test_module_names_without_layer_parse_to_none():
    assert parse_site("embed_tokens.output") == ("module", None)
    assert parse_site("lm_head.input") == ("linear_input", None)
    # fused-expert per-expert sites: the layer comes from layers.{i}, not from the expert index
    assert parse_site("layers.5.mlp.experts.17.gate_up_proj.input") == ("linear_input", 5)


@pytest.mark.parametrize(
    "call",
    [
        lambda: site_name("hidden"),  # layer missing
        lambda: site_name("hidden", -1),
        lambda: site_name("embedding", 2),  # model-level site with a layer
        lambda: site_name("linear_input"),  # module missing
        lambda: site_name("weights", 1),
    ],
)
def test_site_name_rejects_bad_arguments(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("name", ["layers.x.hidden", "layers.3.weird", "", ".input", "hidden", "layers.3"])
def test_parse_site_rejects_non_site_names(name):
    with pytest.raises(ValueError, match="not a site name"):
        parse_site(name)


def test_parse_site_covers_every_layer_component():
    for component in LAYER_COMPONENTS:
        assert parse_site(site_name(component, 7)) == (component, 7)


def test_m_membership_matches_design():
    # DESIGN.md: M over all sites except gate and router (linear inputs and free modules excluded too)
    assert set(M_COMPONENTS) == {"embedding", "hidden", "attn", "mlp", "final_norm"}
    for component in COMPONENTS:
        assert counts_for_m(component) == (component in M_COMPONENTS)
    assert counts_for_m("layers.4.hidden") and not counts_for_m("layers.4.gate")
    assert not counts_for_m("layers.4.router") and not counts_for_m("model.norm.input")
    spec = SiteSpec("final_norm", "final_norm", None, "norm", "output", None, True, 8)
    assert counts_for_m(spec)


def _names():
    return ["embedding", "layers.0.attn", "layers.0.gate", "layers.0.hidden", "layers.1.attn", "layers.1.hidden",
            "final_norm"]


def test_filter_by_name_list_glob_and_predicate():
    names = _names()
    assert filter_sites(names, None) == names
    assert filter_sites(names, "final_norm") == ["final_norm"]
    assert filter_sites(names, "layers.*.hidden") == ["layers.0.hidden", "layers.1.hidden"]
    # a list mixes names and globs; order follows the input, not the spec
    assert filter_sites(names, ["final_norm", "layers.1.*", "embedding"]) == [
        "embedding", "layers.1.attn", "layers.1.hidden", "final_norm"]
    assert filter_sites(names, lambda n: n.endswith(".attn")) == ["layers.0.attn", "layers.1.attn"]


def test_filter_keeps_sitespecs():
    specs = [SiteSpec(n, parse_site(n)[0], parse_site(n)[1], "m", "output", None, False, 4) for n in _names()]
    kept = filter_sites(specs, "layers.0.*")
    assert [s.name for s in kept] == ["layers.0.attn", "layers.0.gate", "layers.0.hidden"]
    assert all(isinstance(s, SiteSpec) for s in kept)


@pytest.mark.parametrize("spec", ["layers.0.mlp", ["embedding", "layers.9.*"], "nothing*"])
def test_filter_reports_unmatched_patterns(spec):
    with pytest.raises(ValueError, match="no site matches"):
        filter_sites(_names(), spec)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(component="weights"),
        dict(capture="both"),
        dict(part="up_half"),
        dict(num_channels=0),
    ],
)
def test_sitespec_validates_fields(kwargs):
    base = dict(name="layers.0.mlp", component="mlp", layer=0, module_name="layers.0.mlp", capture="output",
                part=None, track_tokens=True, num_channels=8)
    with pytest.raises(ValueError):
        SiteSpec(**{**base, **kwargs})


def test_sitespec_is_frozen_and_expert_defaults_to_none():
    spec = SiteSpec("layers.0.mlp", "mlp", 0, "layers.0.mlp", "output", None, True, 8)
    assert spec.expert is None
    with pytest.raises(AttributeError):
        spec.name = "x"
