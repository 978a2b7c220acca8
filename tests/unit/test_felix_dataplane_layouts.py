"""Dataplane's per-endpoint layouts: re-checked, memoised, one per interface (no kernel)."""

import logging

from calico.common.rules import Rule
from calico.felix.dataplane import Dataplane
from calico.felix.state import AclRules, Acls, EndpointSpec

ACLS = Acls(v4=AclRules(inbound=(Rule(cidr="10.0.0.0/8"),)))


def endpoint(eid, mac="02:00:00:00:00:01", addrs=("10.0.0.1",)):
    return EndpointSpec(eid, mac, addrs, acls=ACLS)


def layouts(dp, desired):
    return {key: dp._layout(key, spec) for key, spec in dp._usable(desired).items()}


def test_unchanged_endpoints_reuse_their_layout(tmp_path):
    dp = Dataplane(ip_versions=(4,))
    first = layouts(dp, {"ep1": endpoint("ep1")})
    again = layouts(dp, {"ep1": endpoint("ep1")})  # equal, not the same object
    assert again["ep1"] is first["ep1"]
    changed = layouts(dp, {"ep1": endpoint("ep1", addrs=("10.0.0.2",))})
    assert changed["ep1"] is not first["ep1"]
    assert "! -s 10.0.0.2/32 -j DROP" in changed["ep1"].chains[4]["felix-from-ep1"]


def test_bad_endpoints_are_skipped_and_reported_once(caplog):
    dp = Dataplane(ip_versions=(4,))
    desired = {"ep1": endpoint("ep1", mac="02:00:00:00:00:AA"),       # not canonical
               "ep2": endpoint("other"),                              # key and id disagree
               "ep3": endpoint("ep3", addrs=("10.0.0.3\n-A x",)),     # smuggled text
               "ep4": endpoint("ep4")}
    with caplog.at_level(logging.WARNING):
        assert set(dp._usable(desired)) == {"ep4"}
        assert set(dp._usable(desired)) == {"ep4"}
    assert len(caplog.records) == 3


def test_ids_sharing_an_interface_name_program_only_the_first(caplog):
    dp = Dataplane(ip_versions=(4,))
    desired = {"abcdefghijk-1": endpoint("abcdefghijk-1"), "abcdefghijk-2": endpoint("abcdefghijk-2")}
    with caplog.at_level(logging.WARNING):
        assert set(dp._usable(desired)) == {"abcdefghijk-1"}
        assert set(dp._usable(desired)) == {"abcdefghijk-1"}
    assert len(caplog.records) == 1 and "tapabcdefghijk" in caplog.records[0].getMessage()


def test_a_layout_is_computed_only_when_asked_for():
    """Endpoints whose interface is missing never get as far as a layout."""
    dp = Dataplane(ip_versions=(4,))
    dp._usable({"ep1": endpoint("ep1")})
    assert dp._memo["ep1"].layout is None
