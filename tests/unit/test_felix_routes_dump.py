"""Reading pyroute2's dumped route and neighbour messages (calico.felix.routes).

Built from pyroute2's own message classes, as a dump returns them, so the
test covers how the installed pyroute2 exposes attributes (0.7's
``msg.get("dst")`` finds header fields only)."""

from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from calico.common.kernel_names import ROUTE_PROTO
from calico.felix.routes import NUD_PERMANENT, RT_TABLE_MAIN, felix_routes, neighbours


def route(dst, dst_len, proto=ROUTE_PROTO, table=RT_TABLE_MAIN, oif=7):
    msg = rtmsg()
    msg["family"] = 10 if ":" in (dst or "") else 2
    msg["dst_len"], msg["proto"], msg["table"] = dst_len, proto, table
    msg["attrs"] = [("RTA_TABLE", table), ("RTA_OIF", oif)] + ([("RTA_DST", dst)] if dst else [])
    return msg


def test_only_felix_routes_in_the_main_table_are_read():
    dumped = [route("10.65.0.1", 32), route("fd00::4", 128, oif=9), route("10.65.0.2", 32, proto=4),
              route("10.65.0.3", 32, table=255), route(None, 0)]
    assert dict(felix_routes(dumped)) == {"10.65.0.1/32": 7, "fd00::4/128": 9}


def test_neighbour_fields():
    msg = ndmsg()
    msg["family"], msg["ifindex"], msg["state"] = 2, 4, NUD_PERMANENT
    msg["attrs"] = [("NDA_DST", "10.65.0.1"), ("NDA_LLADDR", "02:00:00:00:00:01")]
    proxy = ndmsg()
    proxy["family"], proxy["ifindex"], proxy["state"] = 10, 5, 0
    proxy["attrs"] = [("NDA_DST", "fe80::1")]
    assert list(neighbours([msg, proxy])) == [(4, "10.65.0.1", "02:00:00:00:00:01", NUD_PERMANENT),
                                             (5, "fe80::1", None, 0)]
