"""Felix's iptables layout: every chain and rule, as pure data, in one place.

The whole filter-table layout for one address family is computed here
from the desired endpoints (docs/dataplane.md, "iptables chain layout";
its invariants: docs/dataplane.md, "Chain invariants"); ``iptables_writer``
makes the kernel match it.  Rules are strings in exactly the form ``iptables-save``
prints them (without ``-A <chain>``), so the layout can be compared with
what the kernel holds, fed to ``iptables-restore``, or parsed into
python-iptables objects, all from the same text.

    INPUT    1st rule:  -j felix-INPUT
    FORWARD  1st rule:  -j felix-FORWARD

    felix-INPUT      -i tap+ -g felix-TO-HOST            endpoint -> host
    felix-TO-HOST    conntrack INVALID -> DROP; RELATED,ESTABLISHED -> ACCEPT
                     -d 127.0.0.0/8 (v6: ::1) -> DROP    taps have route_localnet=1
                     DHCP to the host (v4: udp 68->67; v6: udp 546->547) and,
                       for v6, ICMPv6 router/neighbour solicitation and
                       neighbour advertisement -> ACCEPT
                     then by DefaultEndpointToHostAction:
                       DROP    -j DROP
                       RETURN  -j felix-FROM-ENDPOINT, -j RETURN  (to the host's
                               own INPUT rules, once the endpoint's rules allowed it)
                       ACCEPT  -j felix-FROM-ENDPOINT, -j ACCEPT
    felix-FORWARD    -i tap+ -j felix-FROM-ENDPOINT      endpoint -> anywhere
                     -o tap+ -j felix-TO-ENDPOINT        anywhere -> endpoint
                     -i tap+ -j ACCEPT                   both allowed it:
                     -o tap+ -j ACCEPT                   ACCEPT, not RETURN
    felix-FROM-ENDPOINT   -i tap<id> -g felix-from-<id>  (one per endpoint)
                          -j DROP                        unknown tap
    felix-TO-ENDPOINT     -o tap<id> -g felix-to-<id>
                          -j DROP

Endpoint chains are entered by goto, so their RETURN ("allowed") goes back
to the chain that jumped to the dispatch chain, which then checks the other
side or ACCEPTs; anything not allowed is dropped inside the endpoint chain.
ACCEPT rather than RETURN matters because Docker sets the FORWARD policy to
DROP.  felix-TO-HOST is entered by goto too, so its RETURN goes straight
back to INPUT.

The DHCP and neighbour-discovery exceptions live only on the way to the host
(the packets come from 0.0.0.0 or link-local addresses, before an endpoint
has its address, so they cannot pass the source check): in the shared
from-chain they would let an endpoint send a spoofed DHCP-shaped packet
anywhere through FORWARD.

    felix-from-<id>  conntrack INVALID -> DROP; RELATED,ESTABLISHED -> RETURN
                     not the endpoint's MAC -> DROP
                     source not one of its addresses -> DROP (inline for one
                       address, via felix-sp-<id> for several)
                     outbound set matches (destination) -> RETURN
                     -j DROP
    felix-to-<id>    conntrack as above, inbound set matches (source), DROP

An endpoint gets chains in a family only if it has an address of that
family and its interface exists; its other traffic meets the catch-all
DROP.  A fail-closed endpoint (no ACLs yet, disabled, or refused by the
kernel) has chains holding a single DROP.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from calico.common.config import TO_HOST_ACTIONS
from calico.common.kernel_names import CHAIN_PREFIX, IFACE_ID_CHARS, IFACE_PREFIX
from calico.felix.ipsets import HASH_NET_PORT, SetMatch
from calico.felix.state import EndpointSpec

INPUT_CHAIN = "felix-INPUT"
FORWARD_CHAIN = "felix-FORWARD"
TO_HOST = "felix-TO-HOST"
FROM_ENDPOINT = "felix-FROM-ENDPOINT"
TO_ENDPOINT = "felix-TO-ENDPOINT"
TOP_JUMPS = {"INPUT": INPUT_CHAIN, "FORWARD": FORWARD_CHAIN}
TAP_WILDCARD = f"{IFACE_PREFIX}+"

DROP, RETURN, ACCEPT = TO_HOST_ACTIONS  # the values of DefaultEndpointToHostAction
# Chains that depend on nothing but the settings: written in full at start-up.
HOST_CHAINS = (INPUT_CHAIN, TO_HOST)

_ICMP_NAME = {4: "icmp", 6: "ipv6-icmp"}
_HOST_PREFIX = {4: 32, 6: 128}
_LOOPBACK = {4: "127.0.0.0/8", 6: "::1/128"}
# ICMPv6 router solicitation, neighbour solicitation, neighbour advertisement.
_ND_TYPES = (133, 135, 136)

Chains = dict[str, tuple[str, ...]]


def from_chain(endpoint_id: str) -> str:
    return f"{CHAIN_PREFIX}from-{endpoint_id[:IFACE_ID_CHARS]}"


def to_chain(endpoint_id: str) -> str:
    return f"{CHAIN_PREFIX}to-{endpoint_id[:IFACE_ID_CHARS]}"


def spoof_chain(endpoint_id: str) -> str:
    return f"{CHAIN_PREFIX}sp-{endpoint_id[:IFACE_ID_CHARS]}"


def is_felix_chain(name: str) -> bool:
    return name.startswith(CHAIN_PREFIX)


def top_jump_rule(chain: str) -> str:
    return f"-j {chain}"


def to_host_rules(version: int, action: str) -> tuple[str, ...]:
    """felix-TO-HOST: what an endpoint may send to the host itself."""
    if action not in TO_HOST_ACTIONS:
        raise ValueError(f"endpoint to host action {action!r} is not one of {', '.join(TO_HOST_ACTIONS)}")
    rules = ["-m conntrack --ctstate INVALID -j DROP",
             "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
             f"-d {_LOOPBACK[version]} -j DROP"]
    if version == 4:
        rules.append("-p udp -m udp --sport 68 --dport 67 -j ACCEPT")
    else:
        rules += [f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT" for t in _ND_TYPES]
        rules.append("-p udp -m udp --sport 546 --dport 547 -j ACCEPT")
    if action == DROP:
        rules.append("-j DROP")
    else:
        rules += [f"-j {FROM_ENDPOINT}", f"-j {action}"]
    return tuple(rules)


def static_chains(version: int, action: str, dispatch_from: Iterable[str] = (),
                  dispatch_to: Iterable[str] = ()) -> Chains:
    return {
        INPUT_CHAIN: (f"-i {TAP_WILDCARD} -g {TO_HOST}",),
        TO_HOST: to_host_rules(version, action),
        FORWARD_CHAIN: (f"-i {TAP_WILDCARD} -j {FROM_ENDPOINT}", f"-o {TAP_WILDCARD} -j {TO_ENDPOINT}",
                        f"-i {TAP_WILDCARD} -j ACCEPT", f"-o {TAP_WILDCARD} -j ACCEPT"),
        FROM_ENDPOINT: (*dispatch_from, "-j DROP"),
        TO_ENDPOINT: (*dispatch_to, "-j DROP"),
    }


def set_match_rule(match: SetMatch, direction: str, version: int) -> str:
    """One set test, RETURNing (allowing) what matches.

    Inbound traffic is matched on its source, outbound on its destination;
    the port is always the packet's destination port."""
    where = "src" if direction == "in" else "dst"
    words: list[str] = []
    if match.protocol is not None:
        proto = _ICMP_NAME[version] if match.protocol in ("icmp", "icmpv6") else match.protocol
        words += ["-p", proto]
        if match.ports is not None:
            low, high = match.ports
            words += ["-m", "multiport", "--dports", f"{low}" if low == high else f"{low}:{high}"]
        elif match.icmp_type is not None:
            icmp = str(match.icmp_type) + ("" if match.icmp_code is None else f"/{match.icmp_code}")
            words += (["-m", "icmp", "--icmp-type"] if version == 4 else
                      ["-m", "icmp6", "--icmpv6-type"]) + [icmp]
    dims = f"{where},dst" if match.set_type == HASH_NET_PORT else where
    words += ["-m", "set", "--match-set", match.set_name, dims, "-j", "RETURN"]
    return " ".join(words)


_CONNTRACK = ("-m conntrack --ctstate INVALID -j DROP",
              "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN")


def endpoint_chains(spec: EndpointSpec, version: int,
                    set_matches: Mapping[tuple[str, int, str], tuple[SetMatch, ...]]) -> Chains:
    """The from-, to- and (for several addresses) spoof chains of one endpoint."""
    eid = spec.endpoint_id
    if not spec.open_for_traffic:
        return {from_chain(eid): ("-j DROP",), to_chain(eid): ("-j DROP",)}
    chains: Chains = {}
    addrs = sorted(spec.addrs_of(version))
    prefix = _HOST_PREFIX[version]
    if len(addrs) == 1:
        source_check: tuple[str, ...] = (f"! -s {addrs[0]}/{prefix} -j DROP",)
    else:
        chains[spoof_chain(eid)] = (*(f"-s {a}/{prefix} -j RETURN" for a in addrs), "-j DROP")
        source_check = (f"-j {spoof_chain(eid)}",)
    outbound = tuple(set_match_rule(m, "out", version) for m in set_matches.get((eid, version, "out"), ()))
    inbound = tuple(set_match_rule(m, "in", version) for m in set_matches.get((eid, version, "in"), ()))
    chains[from_chain(eid)] = (*_CONNTRACK, f"-m mac ! --mac-source {spec.mac.lower()} -j DROP",
                               *source_check, *outbound, "-j DROP")
    chains[to_chain(eid)] = (*_CONNTRACK, *inbound, "-j DROP")
    return chains


def dispatch_rules(spec: EndpointSpec) -> tuple[str, str]:
    """The rules sending an endpoint's traffic to its from- and to-chains."""
    return (f"-i {spec.interface} -g {from_chain(spec.endpoint_id)}",
            f"-o {spec.interface} -g {to_chain(spec.endpoint_id)}")


def table_chains(version: int, action: str, endpoints: Iterable[tuple[EndpointSpec, Chains]]) -> Chains:
    """One family's whole table from each programmed endpoint's own chains:
    those chains, the dispatch rules (in interface order) and the static chains."""
    chains: Chains = {}
    dispatch: list[tuple[str, str]] = []
    for spec, own in sorted(endpoints, key=lambda item: item[0].interface):
        chains.update(own)
        dispatch.append(dispatch_rules(spec))
    chains.update(static_chains(version, action, [d[0] for d in dispatch], [d[1] for d in dispatch]))
    return chains

