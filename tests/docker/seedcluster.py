"""The pieces of the two-host Docker set-up: hosts, the seed's lines, waiting.

Shared by conftest.py (which builds the set-up) and the tests; see
conftest.py for what is set up and why.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


from calico.lab.layout import host_ip, host_name

from dockerhost import REPO, DockerHost

# Figures printed in the test summary (conftest.pytest_terminal_summary).
FIGURES: dict[str, str] = {}

PREFIX = "cdk-"
HOSTS = (1, 2)

# The seed's "Start the containers" lines, verbatim.
SEED_HOST1_LINES = (
    'docker run -d -v /var/log/bird:/var/log/bird --privileged=true --name="bird" --net=host --restart=always -t calico:bird /usr/bin/run_bird bird1.conf',
    'docker run -d -v /var/log/calico:/var/log/calico --privileged=true --name="plugin_net" --net=host -v /opt/plugin:/opt/plugin calico:plugin python /opt/scripts/plugin.py network',
    'docker run -d -v /var/log/calico:/var/log/calico --privileged=true --name="plugin_ep" --net=host -v /opt/plugin:/opt/plugin calico:plugin python /opt/scripts/plugin.py ep',
    'docker run -d -v /var/log/calico:/var/log/calico --privileged=true --name="felix" --net=host --restart=always -t calico:felix calico-felix --config-file=/etc/calico/felix.cfg',
    'docker run -d -v /var/log/calico:/var/log/calico --privileged=true --name="aclmgr" --net=host --restart=always -t calico:felix calico-acl-manager --config-file=/etc/calico/acl_manager.cfg',
)
SEED_HOST2_LINES = (
    'docker run -d -v /var/log/calico:/var/log/calico --privileged=true --name="felix" --net=host --restart=always -t calico:felix calico-felix --config-file=/etc/calico/felix.cfg',
    'docker run -d -v /var/log/bird:/var/log/bird --privileged=true --name="bird" --net=host --restart=always -t calico:bird /usr/bin/run_bird bird2.conf',
)
# The seed's prerequisite step 5 (README step 6), directories part (per host, see above).
SEED_DIRS = ("var/log/calico", "var/run/netns", "opt/plugin/data", "var/log/bird")
SEED_MODULES = ("ip6_tables", "xt_set")



@dataclass
class SimHost:
    """One simulated Docker host: a namespace, its dockerd and its files."""

    index: int
    engine: DockerHost
    root: Path  # stands for this host's "/" in -v sources

    @property
    def name(self) -> str:
        return host_name(self.index)

    @property
    def ip(self) -> str:
        return host_ip(self.index)

    @property
    def netns(self) -> str:
        assert self.engine.netns is not None
        return self.engine.netns

    @property
    def data_dir(self) -> Path:
        return self.root / "opt/plugin/data"

    def path(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        return self.engine.run_cli(*args, timeout=timeout, check=check)

    def seed_line(self, line: str) -> subprocess.CompletedProcess:
        """Run one of the seed's `docker run` lines here, -v sources under this host's root."""
        args = shlex.split(line)
        assert args[:2] == ["docker", "run"], line
        rewritten = []
        for i, arg in enumerate(args[2:], start=2):
            if args[i - 1] == "-v" and arg.startswith("/"):
                source, _, target = arg.partition(":")
                arg = f"{self.path(source)}:{target}"
            rewritten.append(arg)
        return self.docker("run", *rewritten)

    def in_netns(self, *argv: str, check: bool = True, timeout: float = 60,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", f"--net=/var/run/netns/{self.netns}", "--", *argv],
                              capture_output=True, text=True, check=check, timeout=timeout, env=env)

    def network_container(self, *args: str) -> subprocess.CompletedProcess:
        """bash network_container.sh ARGS, run in this host's namespace against its dockerd."""
        env = {**self.engine.env(), "CALICO_DATA_DIR": str(self.data_dir),
               "DOCKER": shutil.which("docker", path="/usr/bin") or "docker"}
        return self.in_netns("bash", str(REPO / "network_container.sh"), *args, check=False, env=env)

    def logs(self, container: str, lines: int = 15) -> str:
        result = self.docker("logs", "--tail", str(lines), container, check=False)
        return (result.stdout + result.stderr).strip()


@dataclass
class SeedCluster:
    hosts: dict[int, SimHost]
    tmp: Path
    backend: str = "legacy"  # of the hosts' iptables: where Docker's rules are, and Felix's should be
    figures: dict[str, tuple[float, int]] = field(default_factory=dict)
    build_seconds: float = 0.0
    load_seconds: float = 0.0
    setup_seconds: float = 0.0
    key_step_output: str = ""
    tree: Path | None = None

    def diagnostics(self) -> str:
        out = []
        for host in self.hosts.values():
            for name in ("bird", "felix", "plugin_ep", "plugin_net", "aclmgr"):
                if host.index != 1 and name in ("plugin_ep", "plugin_net", "aclmgr"):
                    continue
                out.append(f"--- {host.name} {name} ---\n{host.logs(name)}")
            out.append(f"--- {host.name} routes ---\n"
                       + host.in_netns("ip", "route", check=False).stdout.strip())
        return "\n".join(out)


