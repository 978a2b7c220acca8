"""Two Docker hosts on one machine, set up as the seed's guide sets up two servers.

``seed_cluster`` (module scope) is what every test in test_seed_deployment.py
shares, so the costly part happens once:

1. the fabric: calico/lab/fabric.py's bridge in its own namespace and two
   host namespaces on it (``cdk-host-1`` 10.240.0.11, ``cdk-host-2``
   10.240.0.12), no link to the root namespace;
2. the images: a temporary copy of what the seed copies to /opt/demo, with
   the seed's sed step (corrected: double quotes) applied for those two
   hosts -- this is how the seed's ``docker run`` lines, which pass no
   environment, learn the host addresses -- and the README's key step
   (``make_secret.sh``: the cluster secret into the felix and plugin
   folders, so every image holds the same one), built on a throwaway
   root-namespace dockerd (no bridge, no iptables; builds use
   ``--network host`` to reach the package mirror), which is stopped once
   the images are saved;
3. a dockerd per host namespace (tests/docker/dockerhost.py), with Docker's
   default iptables management (legacy backend, FORWARD policy DROP), the
   images loaded into each;
4. the seed's prerequisites (modprobe, directories, felix.txt into host 1's
   data directory) and its "Start the containers" lines, run as written.

Each host's files live under its own directory (``<tmp>/host-N``): the only
change made to the seed's lines is that a ``-v /path:...`` source becomes
``-v <tmp>/host-N/path:...``.  Both dockerds see the machine's one file
system, so without that both hosts would share /opt/plugin: host 2's
endpoint files would be in host 1's data directory from the start, the
seed's scp step would prove nothing, and the test would write into the
machine's real /opt/plugin and /var/log.  With it, the scp step is a copy
from host 2's directory to host 1's, as on two machines.

While working on the tests, set ``CALICO_DOCKER_IMAGES_TAR=PATH``: the
first run builds and saves the four images there, later runs load them
instead of building (delete the file after changing the code or the
Dockerfiles).  CI leaves it unset and builds every time.

Everything is removed at the end, also when a test or the set-up fails:
containers, the dockerds (with their containerd and mounts), the
namespaces (with every route, iptables rule and ipset inside them) and the
temporary directories.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from calico import netns
from calico.lab import fabric
from calico.lab.layout import Layout, host_ip, host_name

from dockerhost import IMAGE_DIRS, DockerHost, DockerHostError, build_images, prepare_build_tree, run_key_step
from seedcluster import (FIGURES, HOSTS, PREFIX, SEED_DIRS, SEED_HOST1_LINES, SEED_HOST2_LINES,
                         SEED_MODULES, SeedCluster, SimHost)


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.write_sep("-", "Docker deployment figures")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed (the Docker tests need docker.io, iproute2, util-linux)")


def _remove_namespaces(layout: Layout) -> None:
    for name in [layout.host_ns(i) for i in HOSTS] + [layout.fabric_ns]:
        netns.remove(name)


def _images(tree: Path, tmp: Path, engines: list[DockerHost], cluster: SeedCluster) -> None:
    """Build (or load from CALICO_DOCKER_IMAGES_TAR) and load into every engine."""
    tar = os.environ.get("CALICO_DOCKER_IMAGES_TAR")
    start = time.monotonic()
    if tar and os.path.isfile(tar):
        for engine in engines:
            engine.run_cli("load", "-q", "-i", tar)
        cluster.load_seconds = time.monotonic() - start
        return
    with DockerHost("build", workdir_parent=str(tmp)) as builder:
        cluster.figures = build_images(builder, context_root=tree, log_dir=tmp)
        cluster.build_seconds = time.monotonic() - start
        start = time.monotonic()
        for engine in engines:
            engine.load_images_from(builder, IMAGE_DIRS)
        cluster.load_seconds = time.monotonic() - start
        if tar:
            builder.run_cli("save", "-o", tar, *IMAGE_DIRS)


@pytest.fixture(scope="module")
def seed_cluster():
    for tool in ("docker", "dockerd", "nsenter", "ip", "modprobe"):
        _require(tool)
    layout = Layout(lab_dir="/nonexistent-cdk", prefix=PREFIX)
    _remove_namespaces(layout)  # leftovers of a run that was killed
    # Under /tmp, not $TMPDIR: dockerd's sockets must stay within 108 characters.
    tmp = Path(tempfile.mkdtemp(prefix="cdk-", dir="/tmp"))
    hosts: dict[int, SimHost] = {}
    started = time.monotonic()
    try:
        fabric.create_fabric(layout)
        for index in HOSTS:
            fabric.plug_host(layout, index)
        for index in HOSTS:
            engine = DockerHost(f"host{index}", netns=layout.host_ns(index), workdir_parent=str(tmp))
            hosts[index] = SimHost(index, engine, tmp / f"host-{index}")
            engine.start()
        cluster = SeedCluster(hosts, tmp)
        # Prerequisites, steps 1 and 2: the repository at "/opt/demo", sed'ed.
        tree = prepare_build_tree(tmp / "demo", host_ip(1), host_ip(2), host_name(1), host_name(2))
        # Step 3, the key step, on host 1 before building; the copy to host 2 is
        # implicit: both dockerds get the same images.
        cluster.key_step_output = run_key_step(tree)
        cluster.tree = tree
        _images(tree, tmp, [h.engine for h in hosts.values()], cluster)

        # Prerequisites, steps 6 and 7.
        for module in SEED_MODULES:
            subprocess.run(["modprobe", module], check=False, capture_output=True)
        for host in hosts.values():
            for directory in SEED_DIRS:
                host.path(directory).mkdir(parents=True, exist_ok=True)
        shutil.copy(tree / "felix.txt", hosts[1].data_dir / "felix.txt")

        # Start the containers, steps 1-3.
        for line in SEED_HOST1_LINES:
            hosts[1].seed_line(line)
        for line in SEED_HOST2_LINES:
            hosts[2].seed_line(line)
        cluster.setup_seconds = time.monotonic() - started
        for tag, (seconds, size) in cluster.figures.items():
            FIGURES[f"image {tag}"] = f"built in {seconds:.1f} s, {size / 1e6:.1f} MB"
        if cluster.build_seconds:
            FIGURES["base image + four builds"] = f"{cluster.build_seconds:.1f} s"
        FIGURES["images loaded into both dockerds"] = f"{cluster.load_seconds:.1f} s"
        FIGURES["set-up (fabric, dockerds, images, seed's containers)"] = f"{cluster.setup_seconds:.1f} s"
        yield cluster
    finally:
        errors = []
        for host in hosts.values():
            try:
                host.engine.stop()
            except (DockerHostError, OSError) as exc:
                errors.append(f"{host.name}: {exc}")
        _remove_namespaces(layout)
        shutil.rmtree(tmp, ignore_errors=True)
        if errors:
            print("clean-up problems: " + "; ".join(errors))

