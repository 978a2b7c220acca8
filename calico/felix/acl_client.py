"""Felix's ACL client: each endpoint's ACLs and the members of the groups they name.

ACLs and group members come by subscription alone (docs/protocol.md, "ACLs
and memberships: ACL manager and Felix").  Felix subscribes to each
endpoint's topic when it learns the endpoint, and to a group's topic while
some endpoint's rules name the group (``groups``); the ACL manager's XPUB
answers every subscription with the current state (ACLUPDATE,
GROUPMEMBERS).  A gap in a group's sequence numbers is answered by asking
for the whole group (GETGROUPMEMBERS on the REQ channel); the members held
meanwhile stay in force.  An endpoint stays fail-closed until its ACLs and
the members of every group they name are known.

Everything this part knows of one endpoint is in its ``EndpointAcls``
record, so forgetting the endpoint is deleting that record (and letting go
of the groups only it named).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from calico.common import messages
from calico.felix.acl_subscription import AclSubscription
from calico.felix.endpoints import EndpointTable, Pools, acls_from_wire, describe_acls, describe_pools, in_pools
from calico.felix.groups import GroupMembers, Outcome
from calico.felix.metrics import FelixMetrics
from calico.felix.resync_client import ChannelFactory

log = logging.getLogger(__name__)

MEMBERS_TYPES = frozenset({messages.GROUPMEMBERS, messages.MEMBERSUPDATE})


@dataclass
class EndpointAcls:
    """One endpoint's facts here; while it exists we subscribe to its topic."""

    problems: frozenset[str] = frozenset()  # rules skipped in its last ACLUPDATE, reported once


def inside_pools(msg: dict[str, Any], pools: Pools) -> dict[str, Any]:
    """A membership message without the addresses outside the pools:
    endpoints can only hold pool addresses (``EndpointTable.refusal``), so
    such a member is a mistake or an attempt to let a stranger in."""
    key = "addrs" if msg["type"] == messages.GROUPMEMBERS else "added"
    outside = [addr for addr in msg[key] if not in_pools(addr, pools)]
    if not outside:
        return msg
    log.warning("Group %s: ignoring %d address(es) outside the pools (%s): %s", msg["group"], len(outside),
                describe_pools(pools), " ".join(outside[:5]) + (" ..." if len(outside) > 5 else ""))
    dropped = set(outside)
    return dict(msg, **{key: [addr for addr in msg[key] if addr not in dropped]})


class AclClient:
    def __init__(self, channel: ChannelFactory, subscription: Callable[..., AclSubscription],
                 table: EndpointTable, metrics: FelixMetrics, *, mark_dirty: Callable[[], None]) -> None:
        """``channel(on_reply, on_reset)`` opens the REQ channel to the ACL
        manager; ``subscription(topics=, on_frames=)`` the SUB socket."""
        self.table = table
        self.metrics = metrics
        self._mark_dirty = mark_dirty
        self.groups = GroupMembers()
        self._endpoints: dict[str, EndpointAcls] = {}
        self._members_asked: set[str] = set()  # GETGROUPMEMBERS queued or in flight
        self.acl_manager = channel(self._on_reply, self._on_reset)
        self.subscription = subscription(topics=self.topics, on_frames=self.on_frames)

    def topics(self) -> Iterator[bytes]:
        """What the subscription holds besides the heartbeat."""
        for endpoint_id in self._endpoints:
            yield endpoint_id.encode()
        for group in self.groups.needed():
            yield messages.members_topic(group)

    def watch(self, endpoint_id: str) -> None:
        """A new endpoint: the ACL manager answers our subscription with its ACLs."""
        if endpoint_id not in self._endpoints:
            self._endpoints[endpoint_id] = EndpointAcls()
            self.subscription.subscribe(endpoint_id.encode())

    def forget(self, endpoint_id: str) -> None:
        if self._endpoints.pop(endpoint_id, None) is not None:
            self.subscription.unsubscribe(endpoint_id.encode())
        self._unsubscribe_groups(self.groups.forget(endpoint_id))

    def _subscribe_groups(self, groups: list[str]) -> None:
        for group in groups:
            log.info("Subscribing to the members of group %s", group)
            self.subscription.subscribe(messages.members_topic(group))

    def _unsubscribe_groups(self, groups: list[str]) -> None:
        for group in groups:
            log.info("Group %s: no endpoint here names it now; dropping its members", group)
            self.subscription.unsubscribe(messages.members_topic(group))
            self._members_asked.discard(group)
        if groups:
            self._mark_dirty()

    # --- the REQ channel: GETGROUPMEMBERS after a gap ----------------------------------

    def _ask_for_members(self, group: str, why: str) -> None:
        if group in self._members_asked:
            return
        self._members_asked.add(group)
        log.info("Group %s: %s; asking the ACL manager for all its members (keeping the ones we have)", group, why)
        self.acl_manager.send(messages.make(messages.GETGROUPMEMBERS, group=group))

    def _on_reset(self) -> None:
        # Nothing is in flight after a reset: ask again for what was pending.
        self.acl_manager.clear()
        asked, self._members_asked = sorted(self._members_asked), set()
        for group in asked:
            if self.groups.is_needed(group):
                self._ask_for_members(group, "still missing members after the ACL manager stopped answering")

    def _on_reply(self, request: dict[str, Any], reply: dict[str, Any]) -> None:
        if request["type"] != messages.GETGROUPMEMBERS:
            return
        group = request["group"]
        self._members_asked.discard(group)
        rc = reply.get("rc", messages.RC_SUCCESS)
        if rc != messages.RC_SUCCESS:
            log.warning("ACL manager refused GETGROUPMEMBERS for group %s (%s: %r)", group, rc, reply.get("message"))

    # --- publications ------------------------------------------------------------------

    def on_frames(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            log.warning("ACL publication with %d frame(s) ignored (want topic and body)", len(frames))
            return
        topic, body = frames
        if topic == messages.TOPIC_ACL_HEARTBEAT:
            self.metrics.acl_publication(messages.HEARTBEAT)
            return
        group = messages.group_of_topic(topic)
        if group is not None:
            self.handle_members(group, body)
        else:
            self.handle_acl_update(topic, body)

    def handle_acl_update(self, topic: bytes, body: bytes) -> None:
        endpoint_id = topic.decode("utf-8", errors="replace")
        record = self._endpoints.get(endpoint_id)
        if record is None or endpoint_id not in self.table:
            # Subscriptions match by prefix, and a destroyed endpoint's ACLs
            # may still be in flight: neither is ours to program.
            log.debug("ACLUPDATE on topic %r ignored: not an endpoint of this host", endpoint_id)
            return
        try:
            msg = messages.decode_request(body, {messages.ACLUPDATE})
        except messages.MessageError as exc:
            log.warning("ACLUPDATE for endpoint %s rejected (%s); keeping its previous ACLs", endpoint_id, exc)
            self.metrics.acl_publication("rejected")
            return
        self.metrics.acl_publication(messages.ACLUPDATE)
        acls, problems = acls_from_wire(msg["acls"])
        for problem in problems:
            if problem not in record.problems:
                log.warning("ACLUPDATE for endpoint %s: skipped %s", endpoint_id, problem)
        record.problems = frozenset(problems)
        if self.table.set_acls(endpoint_id, acls):
            log.info("ACLs for endpoint %s: %s", endpoint_id, describe_acls(acls))
            self._mark_dirty()
        else:
            log.debug("ACLs for endpoint %s unchanged", endpoint_id)
        added, dropped = self.groups.need(endpoint_id, acls.groups)
        self._subscribe_groups(added)
        self._unsubscribe_groups(dropped)

    def handle_members(self, group: str, body: bytes) -> None:
        """A GROUPMEMBERS or MEMBERSUPDATE on a group's topic."""
        if not self.groups.is_needed(group):
            log.debug("membership of group %s ignored: no endpoint here names it", group)
            return
        try:
            msg = messages.decode_request(body, MEMBERS_TYPES)
        except messages.MessageError as exc:
            log.warning("Membership message for group %s rejected (%s); keeping the members we have", group, exc)
            self.metrics.acl_publication("rejected")
            return
        self.metrics.acl_publication(msg["type"])
        if msg["group"] != group:
            log.warning("%s for group %s arrived on group %s's topic; ignored", msg["type"], msg["group"], group)
            return
        msg = inside_pools(msg, self.table.pools)
        if msg["type"] == messages.GROUPMEMBERS:
            outcome = self.groups.snapshot(msg)
            self._members_asked.discard(group)
        else:
            outcome = self.groups.delta(msg)
        held = self.groups.held(group)
        if outcome is Outcome.GAP:
            self._ask_for_members(group, f"missed a change (have {held.epoch}/{held.seq}, got "  # type: ignore[union-attr]
                                         f"{msg['epoch']}/{msg['seq']})")
        elif outcome is Outcome.CHANGED:
            log.info("Group %s: %d addresses (%s seq %d)", group, len(held.addrs), msg["type"],  # type: ignore[union-attr]
                     msg["seq"])
            self._mark_dirty()

    def close(self) -> None:
        self.acl_manager.close()
        self.subscription.close()
