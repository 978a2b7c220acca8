"""Felix's desired state: what the host should look like, as plain values.

The agent (calico.felix.agent) builds these from the plugin's endpoint
messages and the ACL manager's ACLUPDATEs; the dataplane
(calico.felix.dataplane) is handed the whole map and makes the kernel match.
Nothing here touches the kernel, so everything that decides *what* to
program is testable without root.

An endpoint with ``acls`` None has not received its ACLs yet (or not yet
the members of every group its rules name); like a disabled endpoint it is
programmed fail-closed (route and chains present, nothing allowed in or
out).  Group members are plain values too: group name -> every address of
its members (``GroupAddrs``), handed to the dataplane beside the endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping

from calico.common.rules import Rule
from calico.common.kernel_names import interface_name


GroupAddrs = Mapping[str, frozenset[str]]


@dataclass(frozen=True)
class AclRules:
    """One address family's allow rules: each sourced from a CIDR of the
    family or from a group (matched against the group's shared set)."""

    inbound: tuple[Rule, ...] = ()
    outbound: tuple[Rule, ...] = ()

    @cached_property
    def groups(self) -> frozenset[str]:
        return frozenset(r.group for r in self.inbound + self.outbound if r.group is not None)


@dataclass(frozen=True)
class Acls:
    v4: AclRules = field(default_factory=AclRules)
    v6: AclRules = field(default_factory=AclRules)

    def family(self, version: int) -> AclRules:
        return self.v4 if version == 4 else self.v6

    @cached_property
    def groups(self) -> frozenset[str]:
        """The groups whose members these rules need."""
        return self.v4.groups | self.v6.groups


@dataclass(frozen=True)
class EndpointSpec:
    endpoint_id: str
    mac: str
    addrs: tuple[str, ...]  # canonical address strings, v4 and/or v6
    enabled: bool = True
    acls: Acls | None = None

    @property
    def interface(self) -> str:
        return interface_name(self.endpoint_id)

    @property
    def open_for_traffic(self) -> bool:
        """Fail closed until ACLs arrive, and while disabled."""
        return self.enabled and self.acls is not None

    def addrs_of(self, version: int) -> tuple[str, ...]:
        return tuple(a for a in self.addrs if (":" in a) == (version == 6))
