"""The cluster file's [global] settings nat_outgoing, ipip, route_reflectors, and their variables."""

import pytest

from calico.common.datafiles import (DataFileError, GlobalSettings, load_cluster, parse_data_text,
                                     settings_with_env)
from calico.common.validation import ValidationError
from calico.lab.hosts import with_global_settings

HOSTS = "[felix host-1]\nip=10.0.0.1\n[felix host-2]\nip=10.0.0.2\n[felix host-3]\nip=10.0.0.3\n"


def global_of(text):
    contents = parse_data_text(text, "felix.txt")
    return contents.global_settings, contents.errors


def test_defaults_are_no_nat_no_tunnel_full_mesh():
    settings, errors = global_of("[global]\npool = 10.65.0.0/16\n")
    assert errors == []
    assert (settings.nat_outgoing, settings.ipip, settings.route_reflectors) == (False, "never", ())


@pytest.mark.parametrize("text, want", [
    ("nat_outgoing = true", {"nat_outgoing": True}),
    ("nat_outgoing = False", {"nat_outgoing": False}),
    ("ipip = cross-subnet", {"ipip": "cross-subnet"}),
    ("ipip = Always", {"ipip": "always"}),
    ("route_reflectors = host-1, host-2.example.com", {"route_reflectors": ("host-1", "host-2")}),
])
def test_good_values(text, want):
    settings, errors = global_of(f"[global]\n{text}\n")
    assert errors == []
    for key, value in want.items():
        assert getattr(settings, key) == value


@pytest.mark.parametrize("text, key", [
    ("nat_outgoing = sure", "nat_outgoing"),
    ("nat_outgoing = true false", "nat_outgoing"),
    ("ipip = crosssubnet", "ipip"),
    ("ipip = always\n  never", "ipip"),
    ("route_reflectors = host 1", "route_reflectors"),
    ("route_reflectors = a, a", "route_reflectors"),
    ("ipip_mode = always", "ipip_mode"),
    ("as = ²", "as"),
    ("as = 65000\n", None),
])
def test_bad_values_are_one_line_naming_the_key(text, key):
    _, errors = global_of(f"[global]\n{text}\n")
    if key is None:
        assert errors == []
        return
    assert len(errors) == 1 and "\n" not in errors[0] and key in errors[0], errors


def test_reflectors_must_be_hosts(tmp_path):
    path = tmp_path / "felix.txt"
    path.write_text(HOSTS + "[global]\nroute_reflectors = host-1, host-9\n")
    with pytest.raises(DataFileError, match="route_reflectors: 'host-9' is not a \\[felix\\] host"):
        load_cluster(str(path))
    path.write_text(HOSTS + "[global]\nroute_reflectors = host-1, host-3\n")
    assert load_cluster(str(path)).settings.route_reflectors == ("host-1", "host-3")


def test_environment_overrides_the_file_and_is_checked():
    base = GlobalSettings(nat_outgoing=True, ipip="always")
    env = {"CALICO_NAT_OUTGOING": "false", "CALICO_IPIP": "cross-subnet", "CALICO_ROUTE_REFLECTORS": ""}
    settings = settings_with_env(base, env)
    assert (settings.nat_outgoing, settings.ipip, settings.route_reflectors) == (False, "cross-subnet", ())
    assert settings_with_env(base, {}) is base
    with pytest.raises(ValidationError, match="CALICO_IPIP"):
        settings_with_env(base, {"CALICO_IPIP": "yes"})


def test_lab_set_rewrites_only_the_global_keys_it_is_given():
    text = "[global]\nas = 65000\nipip = never\n\n[felix host-1]\nip=10.0.0.1\n"
    new = with_global_settings(text, {"ipip": "always", "nat_outgoing": "true"})
    settings, errors = global_of(new)
    assert errors == [] and settings.ipip == "always" and settings.nat_outgoing and settings.as_number == 65000
    assert "[felix host-1]" in new
    added = with_global_settings("[felix host-1]\nip=10.0.0.1\n", {"ipip": "always"})
    assert global_of(added)[0].ipip == "always"
