"""The lab's memory between commands: state.json in the lab directory.

It records what ``up`` and ``add`` made (host count, containers with their
host, addresses, groups, endpoint id and when their endpoint file was
written), so ``check``, ``status`` and ``remove`` know the lab without
probing.  ``down`` does not rely on it: it finds namespaces by prefix and
processes by pid file and namespace, so a lost or stale state file cannot
leave anything behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from calico.common.datafiles import write_file_atomically
from calico.lab.layout import LabError, Layout


@dataclass
class Container:
    name: str
    host: int
    addrs: list[str]
    groups: list[str]
    endpoint_id: str
    written_at: float = 0.0


@dataclass
class LabState:
    hosts: int = 0
    containers: dict[str, Container] = field(default_factory=dict)
    subnets: int = 1
    # The kernel has no IP-in-IP: each host runs the lab's user-space tunl0.
    ipip_standin: bool = False


def load(layout: Layout) -> LabState:
    try:
        with open(layout.state_file, encoding="utf-8") as handle:
            raw = json.load(handle)
    except FileNotFoundError:
        return LabState()
    except (OSError, ValueError) as exc:
        raise LabError(f"{layout.state_file}: unreadable lab state ({exc}); run 'calico-lab down'") from None
    return LabState(raw.get("hosts", 0),
                    {name: Container(**c) for name, c in raw.get("containers", {}).items()},
                    raw.get("subnets", 1), raw.get("ipip_standin", False))


def save(layout: Layout, state: LabState) -> None:
    os.makedirs(layout.lab_dir, exist_ok=True)
    raw = {"hosts": state.hosts, "containers": {n: asdict(c) for n, c in state.containers.items()},
           "subnets": state.subnets, "ipip_standin": state.ipip_standin}
    write_file_atomically(layout.state_file, json.dumps(raw, indent=1, sort_keys=True) + "\n")


def require_up(layout: Layout) -> LabState:
    state = load(layout)
    if state.hosts < 1:
        raise LabError(f"no lab is up in {layout.lab_dir} (run 'calico-lab up')")
    return state
