"""Which iptables backend Felix programs (``IptablesBackend``), and a check of the other one.

See docs/dataplane.md, "iptables backends".

The kernel holds two iptables implementations side by side: *legacy*
(x_tables, what libiptc and ``iptables-legacy`` write) and *nft*
(nf_tables, what ``iptables-nft`` writes, and what ``iptables`` means on
Debian 12, Ubuntu 22.04 and later, Fedora...).  Every packet passes the
hooks of both, so a DROP in either drops it: Felix's ``ACCEPT`` of what the
groups allow must be in the backend where Docker's ``FORWARD`` policy
``DROP`` is, or containers on different hosts silently cannot talk.

``IptablesBackend`` (felix.cfg ``[global]``):

- ``legacy`` or ``nft``: that backend.
- ``auto`` (the default): decided once, at start, in Felix's network
  namespace, from what the two backends already hold.  Both are read with
  their save commands (``iptables-legacy-save``, ``iptables-nft-save`` and
  the ``ip6tables-`` ones, every table: read-only, neither creates a table),
  and the first of these rules that decides wins:

  1. Kubernetes' hint chains (``KUBE-IPTABLES-HINT``, ``KUBE-KUBELET-CANARY``,
     which kubelet makes in the mangle table of the backend it uses) in one
     backend only: that one;
  2. Docker's chains (``DOCKER``, ``DOCKER-USER``, ``DOCKER-ISOLATION-...``)
     in one backend only: that one;
  3. one backend holding more rules (``-A`` lines, IPv4 and IPv6, every
     table, Felix's own included, so a restarted Felix stays where its
     chains are): that one;
  4. otherwise (nothing anywhere, or a tie): the backend of the
     ``iptables`` command itself (``iptables -V`` says ``nf_tables`` or
     ``legacy``): nft if it says nf_tables, else legacy.  In the felix image
     that is Debian's default, nft.

  Where only one backend's tools are installed, that one.  The log says
  which backend was chosen and by which rule (``iptables backend: nft
  (IptablesBackend = auto: Docker's chains (DOCKER, DOCKER-USER) are in nft
  only)``).  Go Felix's ``IptablesBackend=Auto`` works the same way (hint
  chains, then rule counts); the Docker rule is this prototype's, since
  Docker is what it runs next to.

At start (``other_backend_warnings``), the backend Felix does not program
is read once more: a ``FORWARD`` chain there with policy ``DROP`` or rules
of its own (a Docker that used that backend before, a firewall) still drops
what Felix accepts, and Felix cannot fix that itself; it says so once, as a
WARNING.  Felix's own chains left there (by an earlier run with the other
backend) are removed by the dataplane (``Dataplane.start``).  None of this
ever fails start-up.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from calico.common.iptables_backends import BACKENDS, LEGACY, NFT, Which, tool
from calico.common.kernel_names import CHAIN_PREFIX as FELIX_PREFIX
from calico.felix.tools import Runner, ToolError, run_tool

log = logging.getLogger(__name__)

AUTO = "auto"
SETTINGS = (AUTO, LEGACY, NFT)  # the values of IptablesBackend
HINT_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")


def other(backend: str) -> str:
    return NFT if backend == LEGACY else LEGACY


def is_docker_chain(name: str) -> bool:
    return name == "DOCKER" or name.startswith("DOCKER-")


@dataclass
class Holdings:
    """What one backend holds in this namespace (both families, every table)."""

    backend: str
    installed: bool = True
    rules: int = 0  # -A lines
    chains: set[str] = field(default_factory=set)  # every chain named, built-in or not
    # version -> (filter FORWARD policy, its rules other than Felix's jump)
    forward: dict[int, tuple[str, int]] = field(default_factory=dict)

    @property
    def docker_chains(self) -> list[str]:
        return sorted(name for name in self.chains if is_docker_chain(name))

    @property
    def hint_chains(self) -> list[str]:
        return sorted(name for name in self.chains if name in HINT_CHAINS)


def parse_holdings(backend: str, texts: Mapping[int, str]) -> Holdings:
    """Holdings from save output (no ``-t``: every table), per family."""
    held = Holdings(backend)
    for version, text in texts.items():
        table = ""
        policy, forward_rules = "ACCEPT", 0
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:].strip()
            elif line.startswith(":"):
                words = line[1:].split()
                if words:
                    held.chains.add(words[0])
                    if table == "filter" and words[0] == "FORWARD" and len(words) > 1:
                        policy = words[1]
            elif line.startswith("-A "):
                held.rules += 1
                if table == "filter" and line.startswith("-A FORWARD ") and \
                        not line.startswith(f"-A FORWARD -j {FELIX_PREFIX}"):
                    forward_rules += 1
        held.forward[version] = (policy, forward_rules)
    return held


def read_holdings(backend: str, versions: Iterable[int] = (4, 6), runner: Runner = subprocess.run,
                  which: Which = shutil.which) -> Holdings:
    """Read one backend (read-only); a family that cannot be read counts as empty."""
    texts: dict[int, str] = {}
    installed = False
    for version in versions:
        command = tool(backend, version, "-save")
        if which(command) is None:
            continue
        installed = True
        try:
            texts[version] = run_tool([command], runner=runner, timeout=30)
        except (ToolError, OSError, subprocess.TimeoutExpired) as exc:
            log.debug("could not read the %s iptables backend with %s: %s", backend, command, exc)
    held = parse_holdings(backend, texts)
    held.installed = installed
    return held


def command_backend(runner: Runner = subprocess.run, which: Which = shutil.which) -> tuple[str, str]:
    """(backend, what ``iptables -V`` printed) of the ``iptables`` command here."""
    if which("iptables") is None:
        return LEGACY, "no iptables command"
    try:
        version = run_tool(["iptables", "-V"], runner=runner, timeout=30).strip()
    except (ToolError, OSError, subprocess.TimeoutExpired) as exc:
        return LEGACY, f"iptables -V failed: {exc}"
    return (NFT if "nf_tables" in version else LEGACY), version


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    reason: str

    def describe(self) -> str:
        return f"{self.backend} ({self.reason})"


def _names(names: list[str], most: int = 4) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def choose(held: Mapping[str, Holdings], command: Callable[[], tuple[str, str]]) -> BackendChoice:
    """The auto rule (pure, given what each backend holds): see the module docstring."""
    prefix = "IptablesBackend = auto: "
    usable = [b for b in BACKENDS if held[b].installed]
    if len(usable) == 1:
        return BackendChoice(usable[0], f"{prefix}only iptables-{usable[0]} is installed")
    for label, of in (("Kubernetes' hint chain(s)", lambda h: h.hint_chains),
                      ("Docker's chains", lambda h: h.docker_chains)):
        holders = [b for b in BACKENDS if of(held[b])]
        if len(holders) == 1:
            return BackendChoice(holders[0], f"{prefix}{label} ({_names(of(held[holders[0]]))}) are in "
                                             f"{holders[0]} only")
    both_docker = all(held[b].docker_chains for b in BACKENDS)
    counts = {b: held[b].rules for b in BACKENDS}
    if counts[LEGACY] != counts[NFT]:
        winner = max(BACKENDS, key=lambda b: counts[b])
        note = "; Docker's chains are in both" if both_docker else ""
        return BackendChoice(winner, f"{prefix}{winner} holds more rules ({counts[winner]}, against "
                                     f"{counts[other(winner)]} in {other(winner)}{note})")
    backend, version = command()
    what = "no rules in either backend" if not counts[LEGACY] else f"{counts[LEGACY]} rules in each backend"
    return BackendChoice(backend, f"{prefix}{what}; the iptables command here is {backend} ({version})")


def detect_backend(setting: str = AUTO, versions: Iterable[int] = (4, 6), runner: Runner = subprocess.run,
                   which: Which = shutil.which) -> BackendChoice:
    """The backend to program for ``setting`` (IptablesBackend), and why."""
    setting = setting.lower()
    if setting in BACKENDS:
        return BackendChoice(setting, f"IptablesBackend = {setting}")
    if setting != AUTO:
        raise ValueError(f"IptablesBackend {setting!r} is not one of {', '.join(SETTINGS)}")
    versions = tuple(versions)
    held = {b: read_holdings(b, versions, runner, which) for b in BACKENDS}
    return choose(held, lambda: command_backend(runner, which))


def other_backend_warnings(chosen: str, versions: Iterable[int] = (4, 6), runner: Runner = subprocess.run,
                           which: Which = shutil.which) -> list[str]:
    """Log one WARNING per family whose FORWARD chain in the backend Felix
    does not program filters (policy DROP, or rules); return them."""
    unused = other(chosen)
    held = read_holdings(unused, versions, runner, which)
    warnings = []
    for version in versions:
        policy, rules = held.forward.get(version, ("ACCEPT", 0))
        if policy == "ACCEPT" and not rules:
            continue
        found = " and ".join((["policy " + policy] if policy != "ACCEPT" else [])
                             + ([f"{rules} rule(s)"] if rules else []))
        docker = f"; Docker's chains are there too ({_names(held.docker_chains)})" if held.docker_chains else ""
        message = (f"the {unused} iptables backend has a FORWARD chain with {found} for IPv{version}{docker}: "
                   f"every packet passes both backends, so traffic Felix accepts in {chosen} may still be "
                   f"dropped there. If Docker uses {unused}, set IptablesBackend = {unused} and restart "
                   f"Felix; if these are leftovers of an earlier switch of backends, reboot (or "
                   f"remove them with {tool(unused, version)})")
        log.warning(message)
        warnings.append(message)
    return warnings
