"""The dataplane's per-endpoint layouts: re-checked, memoised, one per interface (no kernel)."""

import logging

from calico.common.rules import Rule
from calico.felix import host_layout
from calico.felix.layout_memo import EndpointLayouts
from calico.felix.state import AclRules, Acls, EndpointSpec

ACLS = Acls(v4=AclRules(inbound=(Rule(cidr="10.0.0.0/8"),)))


def endpoint(eid, mac="02:00:00:00:00:01", addrs=("10.0.0.1",)):
    return EndpointSpec(eid, mac, addrs, acls=ACLS)


def layouts(memo, desired):
    return {key: memo.layout(key, spec) for key, spec in memo.usable(desired).items()}


def test_unchanged_endpoints_reuse_their_layout(tmp_path):
    memo = EndpointLayouts((4,))
    first = layouts(memo, {"ep1": endpoint("ep1")})
    again = layouts(memo, {"ep1": endpoint("ep1")})  # equal, not the same object
    assert again["ep1"] is first["ep1"]
    changed = layouts(memo, {"ep1": endpoint("ep1", addrs=("10.0.0.2",))})
    assert changed["ep1"] is not first["ep1"]
    assert "! -s 10.0.0.2/32 -j DROP" in changed["ep1"].chains[4]["felix-from-ep1"]


def test_bad_endpoints_are_skipped_and_reported_once(caplog):
    memo = EndpointLayouts((4,))
    desired = {"ep1": endpoint("ep1", mac="02:00:00:00:00:AA"),       # not canonical
               "ep2": endpoint("other"),                              # key and id disagree
               "ep3": endpoint("ep3", addrs=("10.0.0.3\n-A x",)),     # smuggled text
               "ep4": endpoint("ep4")}
    with caplog.at_level(logging.WARNING):
        assert set(memo.usable(desired)) == {"ep4"}
        assert set(memo.usable(desired)) == {"ep4"}
    assert len(caplog.records) == 3


def test_ids_sharing_an_interface_name_program_only_the_first(caplog):
    memo = EndpointLayouts((4,))
    desired = {"abcdefghijk-1": endpoint("abcdefghijk-1"), "abcdefghijk-2": endpoint("abcdefghijk-2")}
    with caplog.at_level(logging.WARNING):
        assert set(memo.usable(desired)) == {"abcdefghijk-1"}
        assert set(memo.usable(desired)) == {"abcdefghijk-1"}
    assert len(caplog.records) == 1 and "tapabcdefghijk" in caplog.records[0].getMessage()


def test_a_layout_is_computed_only_when_asked_for(monkeypatch):
    """Endpoints whose interface is missing never get as far as a layout."""
    computed = []
    real = host_layout.endpoint_layout
    monkeypatch.setattr(host_layout, "endpoint_layout", lambda spec, versions: computed.append(spec.endpoint_id)
                        or real(spec, versions))
    memo = EndpointLayouts((4,))
    usable = memo.usable({"ep1": endpoint("ep1"), "ep2": endpoint("ep2", addrs=("10.0.0.2",))})
    assert [layout.spec.endpoint_id for layout in memo.programmed(usable, set(), {"ep1"})] == ["ep2"]
    assert computed == ["ep2"]
