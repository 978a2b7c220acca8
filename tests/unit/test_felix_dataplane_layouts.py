"""Dataplane's per-endpoint layouts: re-checked, memoised, one per interface (no kernel)."""

import logging

from calico.common.rules import Rule
from calico.felix.dataplane import Dataplane
from calico.felix.state import AclRules, Acls, EndpointSpec

ACLS = Acls(v4=AclRules(inbound=(Rule(cidr="10.0.0.0/8"),)))


def endpoint(eid, mac="02:00:00:00:00:01", addrs=("10.0.0.1",)):
    return EndpointSpec(eid, mac, addrs, acls=ACLS)


def test_unchanged_endpoints_reuse_their_layout(tmp_path):
    dp = Dataplane(ip_versions=(4,))
    first = dp._layouts_for({"ep1": endpoint("ep1")})
    again = dp._layouts_for({"ep1": endpoint("ep1")})  # equal, not the same object
    assert again["ep1"] is first["ep1"]
    changed = dp._layouts_for({"ep1": endpoint("ep1", addrs=("10.0.0.2",))})
    assert changed["ep1"] is not first["ep1"]
    assert "! -s 10.0.0.2/32 -j DROP" in changed["ep1"].chains[4]["felix-from-ep1"]


def test_bad_endpoints_are_skipped_and_reported_once(caplog):
    dp = Dataplane(ip_versions=(4,))
    desired = {"ep1": endpoint("ep1", mac="02:00:00:00:00:AA"),       # not canonical
               "ep2": endpoint("other"),                              # key and id disagree
               "ep3": endpoint("ep3", addrs=("10.0.0.3\n-A x",)),     # smuggled text
               "ep4": endpoint("ep4")}
    with caplog.at_level(logging.WARNING):
        assert set(dp._layouts_for(desired)) == {"ep4"}
        assert set(dp._layouts_for(desired)) == {"ep4"}
    assert len(caplog.records) == 3


def test_ids_sharing_an_interface_name_program_only_the_first(caplog):
    dp = Dataplane(ip_versions=(4,))
    desired = {"abcdefghijk-1": endpoint("abcdefghijk-1"), "abcdefghijk-2": endpoint("abcdefghijk-2")}
    with caplog.at_level(logging.WARNING):
        assert set(dp._layouts_for(desired)) == {"abcdefghijk-1"}
        assert set(dp._layouts_for(desired)) == {"abcdefghijk-1"}
    assert len(caplog.records) == 1 and "tapabcdefghijk" in caplog.records[0].getMessage()
