"""Two Docker hosts on one machine, set up as the seed's guide sets up two servers.

``seed_cluster`` (module scope) is what every test in test_seed_deployment.py
shares, so the costly part happens once per set-up of the hosts' iptables.
It is parametrised, and every test runs under both:

- ``legacy``: the hosts' ``iptables`` switched to legacy (the README's note
  for hosts that want legacy; how every host had to be set up before Felix
  could program nf_tables): Docker's rules are in legacy;
- ``nft``: the hosts' ``iptables`` left on nf_tables (Debian 12's default),
  no ``update-alternatives`` step: Docker's rules and its FORWARD policy
  DROP are in nft, and Felix (``IptablesBackend = auto``) must find that.

For each:

1. the fabric: calico/lab/fabric.py's bridge in its own namespace and two
   host namespaces on it (``cdk-host-1`` 10.240.0.11, ``cdk-host-2``
   10.240.0.12), no link to the root namespace;
2. the images (``seed_images``, built once per session for both): a
   temporary copy of what the seed copies to /opt/demo, with
   the seed's sed step (corrected: double quotes) applied for those two
   hosts -- this is how the seed's ``docker run`` lines, which pass no
   environment, learn the host addresses -- and the README's key step
   (``make_secret.sh``: the cluster secret into the felix and plugin
   folders, so every image holds the same one), built on a throwaway
   root-namespace dockerd (no bridge, no iptables; builds use
   ``--network host`` to reach the package mirror), which is stopped once
   the images are saved to a file;
3. a dockerd per host namespace (tests/docker/dockerhost.py), with Docker's
   default iptables management (FORWARD policy DROP) through an
   ``iptables`` of the set-up's backend, the images loaded into each;
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
Dockerfiles).  CI leaves it unset and builds once per run.

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
from dataclasses import dataclass, field
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


@dataclass
class SeedImages:
    tree: Path
    key_step_output: str
    tar: Path
    figures: dict[str, tuple[float, int]] = field(default_factory=dict)
    build_seconds: float = 0.0


@pytest.fixture(scope="session")
def seed_images(root_lock):
    """The four images, built once (or taken from CALICO_DOCKER_IMAGES_TAR), as a ``docker save`` file."""
    for tool in ("docker", "dockerd"):
        _require(tool)
    tmp = Path(tempfile.mkdtemp(prefix="cdk-img-", dir="/tmp"))
    try:
        # Prerequisites, steps 1 and 2: the repository at "/opt/demo", sed'ed.
        tree = prepare_build_tree(tmp / "demo", host_ip(1), host_ip(2), host_name(1), host_name(2))
        # Step 3, the key step, on host 1 before building; the copy to host 2 is
        # implicit: both dockerds get the same images.
        key_step_output = run_key_step(tree)
        wanted = os.environ.get("CALICO_DOCKER_IMAGES_TAR")
        tar = Path(wanted) if wanted else tmp / "images.tar"
        images = SeedImages(tree, key_step_output, tar)
        if not (wanted and tar.is_file()):
            start = time.monotonic()
            with DockerHost("build", workdir_parent=str(tmp)) as builder:
                images.figures = build_images(builder, context_root=tree, log_dir=tmp)
                images.build_seconds = time.monotonic() - start
                builder.run_cli("save", "-o", str(tar), *IMAGE_DIRS)
        yield images
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module", params=["legacy", "nft"])
def seed_cluster(request, seed_images):
    backend = request.param  # of the hosts' iptables, and so of Docker's rules
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
            engine = DockerHost(f"host{index}", netns=layout.host_ns(index), workdir_parent=str(tmp),
                                iptables_backend=backend)
            hosts[index] = SimHost(index, engine, tmp / f"host-{index}")
            engine.start()
        cluster = SeedCluster(hosts, tmp, backend=backend, figures=seed_images.figures,
                              build_seconds=seed_images.build_seconds,
                              key_step_output=seed_images.key_step_output, tree=seed_images.tree)
        tree = seed_images.tree
        start = time.monotonic()
        for host in hosts.values():
            host.engine.run_cli("load", "-q", "-i", str(seed_images.tar))
        cluster.load_seconds = time.monotonic() - start

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
        FIGURES[f"[{backend}] images loaded into both dockerds"] = f"{cluster.load_seconds:.1f} s"
        FIGURES[f"[{backend}] set-up (fabric, dockerds, images, seed's containers)"] = \
            f"{cluster.setup_seconds:.1f} s"
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

