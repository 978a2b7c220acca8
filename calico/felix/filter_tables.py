"""Felix's filter tables: one writer per family, in the iptables backend chosen once.

The backend (legacy or nft; ``IptablesBackend``, ``auto`` picks the one
Docker and the host use) is decided when the tables are made, in the
namespace of the Dataplane that makes them (``backend_check``); python-
iptables is used for legacy only.  At start the other backend is checked
(a warning if its FORWARD chain filters) and Felix's own chains left there
by an earlier run are removed: there they would go on dropping what the new
chains allow.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Iterator, Mapping

from calico.felix import backend_check, iptables_layout, nat
from calico.felix.iptables_layout import Chains
from calico.felix.iptables_writer import RESTORE, IptablesWriter
from calico.felix.isolation import describe_error
from calico.felix.kernel_writes import WriteCounter
from calico.felix.tools import ToolError

log = logging.getLogger(__name__)


class FilterTables(Mapping[int, IptablesWriter]):
    """The filter table of each family, in one backend: ``tables[version]``
    is that family's writer."""

    def __init__(self, versions: tuple[int, ...], writes: WriteCounter, mode: str, library_max_rules: int,
                 backend_setting: str = backend_check.AUTO) -> None:
        self.versions = versions
        self._writes = writes
        choice = backend_check.detect_backend(backend_setting, versions)
        for version in versions:
            save = backend_check.tool(choice.backend, version, "-save")
            if shutil.which(save) is None:
                raise ValueError(f"iptables backend {choice.backend}: {save} "
                                 "is not installed (Debian's iptables package has both backends' tools)")
        self.backend = choice.backend
        log.info("iptables backend: %s", choice.describe())
        self.writers = {v: IptablesWriter(v, writes, mode, library_max_rules, backend=choice.backend)
                        for v in versions}

    def __getitem__(self, version: int) -> IptablesWriter:
        return self.writers[version]

    def __iter__(self) -> Iterator[int]:
        return iter(self.writers)

    def __len__(self) -> int:
        return len(self.writers)

    def check_other_backend(self) -> None:
        """Warn of filtering in the backend Felix does not program, and remove
        Felix's chains an earlier run left there."""
        backend_check.other_backend_warnings(self.backend, self.versions)
        self._retire_other_backend()

    def ensure_host_chains(self, version: int, to_host_action: str) -> None:
        """Felix's top-level chains and the INPUT/FORWARD jumps; the chains
        that depend only on the settings are written in full."""
        self[version].ensure_present(iptables_layout.static_chains(version, to_host_action),
                                    force=iptables_layout.HOST_CHAINS)

    def sync(self, chains: Mapping[int, Chains]) -> None:
        """Make each family's table hold ``chains`` (one commit per family)."""
        for version in self.versions:
            self[version].sync(chains[version])

    def forget(self) -> None:
        for writer in self.values():
            writer.forget()

    def _retire_other_backend(self) -> None:
        """Nothing but Felix's chains and jumps is touched, a legacy table
        that does not exist is not even read, and a failure is logged, never
        raised."""
        unused = backend_check.other(self.backend)
        for version in self.versions:
            if not all(shutil.which(backend_check.tool(unused, version, s)) for s in ("-save", "-restore")):
                continue
            for table, jumps in (("filter", iptables_layout.TOP_JUMPS), ("nat", nat.NAT_JUMPS)):
                writer = IptablesWriter(version, self._writes, RESTORE, table=table, top_jumps=jumps,
                                        optional_jumps=True, backend=unused)
                try:
                    plan = writer.sync({})
                except (ToolError, OSError, subprocess.TimeoutExpired) as exc:
                    log.warning("could not remove Felix's chains from the %s backend's IPv%d %s table: %s",
                                unused, version, table, describe_error(exc))
                    continue
                if not plan.is_empty():
                    log.warning("removed Felix's chains left in the %s backend's IPv%d %s table by an earlier "
                                "run (%s); Felix now programs %s", unused, version, table, plan.summary(),
                                self.backend)
