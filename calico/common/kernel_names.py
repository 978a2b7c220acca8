"""The marks by which Calico's programs recognise each other's kernel state.

Felix writes these and other programs read them back: the attach tool names
the host end of an endpoint's veth ``tap`` + the first ``IFACE_ID_CHARS``
characters of its id, Felix finds its taps by that prefix and stamps every
route it owns with ``ROUTE_PROTO``, and BIRD's config learns exactly the
routes carrying that number and ignores the taps as next-hop interfaces;
Felix's iptables chains carry ``CHAIN_PREFIX``, by which the lab finds them.
They live here, the one home all of those import, so none can drift.
"""

from __future__ import annotations

# Routing-protocol number on Felix's routes (rtnetlink's rtm_protocol); BIRD
# filters on it with ``krt_source``.  Not one of the kernel's well-known ones.
ROUTE_PROTO = 80
IFACE_PREFIX = "tap"
# Linux interface names hold 15 characters: "tap" + 11 leaves room to spare,
# and Felix's per-endpoint chains use the same id prefix.
IFACE_ID_CHARS = 11
# Every iptables chain Felix makes starts so; the lab and the tests find
# Felix's backend by it.
CHAIN_PREFIX = "felix-"


def interface_name(endpoint_id: str) -> str:
    """The host-side interface of endpoint ``endpoint_id``."""
    return IFACE_PREFIX + endpoint_id[:IFACE_ID_CHARS]
