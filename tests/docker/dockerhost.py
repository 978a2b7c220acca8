"""A private dockerd per test host, for the Docker tests.

Each simulated host of the Docker tests is a network namespace with its own
dockerd, so that `docker run --net=host` containers share that host's
namespace as on a real machine.  ``DockerHost`` starts one such dockerd, waits
until it answers, loads or builds images in it, and stops it again, leaving
nothing behind but what it was given.

What was found by experiment on Debian bookworm with dockerd 20.10 (the
reasons for the choices below):

* dockerd is started with ``nsenter --net=/var/run/netns/NS``, not
  ``ip netns exec`` (which remounts /sys and so hides the cgroup mounts from
  dockerd).  Only the network namespace changes: paths and mounts are the
  root's, so everything dockerd keeps (--data-root, --exec-root, the socket,
  the pid file and its own containerd) lives in this object's work directory.
* iptables backend: dockerd programs iptables by running the ``iptables``
  binary it finds on PATH.  On bookworm that is the alternatives' default,
  ``iptables-nft``, so Docker's chains (and its FORWARD policy) land in
  nf_tables inside the namespace.  ``iptables_backend`` ("legacy", the
  default, or "nft") puts first on dockerd's PATH a directory in which
  iptables, ip6tables and their -save/-restore link to that backend's
  commands: what ``update-alternatives --set iptables ...`` does on a real
  host, without touching this machine's alternatives.  ``None`` leaves PATH
  as it is.
* FORWARD policy: dockerd 20.10 sets FORWARD to DROP only when it turns
  ip_forward on itself, and a new namespace inherits ip_forward=1 from the
  root namespace.  ``forward_drop`` (the default) writes ip_forward=0 in the
  namespace before dockerd starts, so Docker behaves as on a fresh host.
* Capabilities: where this process's capability bounding set lacks some of
  the kernel's capabilities (CAP_SYS_RESOURCE here), runc fails every
  ``--privileged`` container ("unable to apply caps").  dockerd is then given
  a runtime that drops those capabilities from each container's spec before
  calling runc, so the seed's ``docker run --privileged`` lines run as written.
* On exit dockerd leaves ``<exec-root>/netns/default`` bind-mounted; ``stop``
  unmounts whatever is left under the work directory before removing it.

Building: ``prepare_build_tree`` makes what the seed copies to /opt/demo
(the image folders and felix.txt), stages the package into it and applies the seed's sed step (corrected); ``build_images``
builds the four images from it (or from the repository itself).

Without a namespace (``netns=None``) the dockerd runs in the root namespace
as an image-building engine only: no bridge, no iptables, no ip_forward or
masquerading changes, so it leaves no network state; builds there use
``--network host`` to reach the package mirrors, which a test host's
namespace cannot.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

import docker

NETNS_DIR = Path("/var/run/netns")
REPO = Path(__file__).resolve().parents[2]
IMAGE_DIRS = {"calico:bird": "bird", "calico:plugin": "plugin", "calico:felix": "felix", "calico:util": "util"}
IPTABLES_COMMANDS = ("iptables", "iptables-save", "iptables-restore",
                     "ip6tables", "ip6tables-save", "ip6tables-restore")
# Capability names by number (linux/capability.h), for the runtime wrapper.
CAPABILITIES = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP "
    "LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER "
    "SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE "
    "SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP "
    "MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF "
    "CHECKPOINT_RESTORE").split()

RUNC_WRAPPER = '''\
"""runc, minus the capabilities this machine's bounding set lacks (see dockerhost.py)."""
import json, os, sys
NAMES = {names!r}
ALLOWED = {{"CAP_" + n for i, n in enumerate(NAMES) if {mask} >> i & 1}}
args = sys.argv[1:]

def option(*names):
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None

def drop_caps(path, in_process):
    with open(path) as handle:
        spec = json.load(handle)
    caps = (spec.get("process") or {{}}).get("capabilities") if in_process else spec.get("capabilities")
    if caps:
        for key, value in caps.items():
            if isinstance(value, list):
                caps[key] = [cap for cap in value if cap in ALLOWED]
        with open(path, "w") as handle:
            json.dump(spec, handle)

bundle = option("--bundle", "-b")
if bundle and ("create" in args or "run" in args):
    drop_caps(os.path.join(bundle, "config.json"), True)
process = option("--process", "-p")
if process and "exec" in args:
    drop_caps(process, False)
os.execv({runc!r}, ["runc"] + args)
'''


class DockerHostError(RuntimeError):
    """A dockerd that would not start, or a docker command that failed; one line."""


def bounding_set_mask() -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    return 0


def missing_capabilities() -> list[str]:
    """Capabilities the kernel knows and docker grants that this process cannot."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    mask = bounding_set_mask()
    return [CAPABILITIES[i] for i in range(min(last + 1, len(CAPABILITIES))) if not mask >> i & 1]


def docker_client_binary() -> str:
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise DockerHostError("no docker client found (apt-get install docker.io)")


class DockerHost:
    """One dockerd with its own data root, exec root, socket and pid file."""

    def __init__(self, name: str, netns: str | None = None, *, iptables: bool = True,
                 iptables_backend: str | None = "legacy", forward_drop: bool = True,
                 extra_args: Sequence[str] = (), workdir_parent: str = "/tmp"):
        self.name = name
        self.netns = netns
        self.iptables = iptables and netns is not None
        if iptables_backend not in ("legacy", "nft", None):
            raise ValueError(f"iptables_backend must be legacy, nft or None, not {iptables_backend!r}")
        self.iptables_backend = iptables_backend
        self.forward_drop = forward_drop
        self.extra_args = list(extra_args)
        self.workdir_parent = workdir_parent
        self.workdir: Path | None = None
        self.process: subprocess.Popen | None = None
        self._client: docker.DockerClient | None = None

    # --- paths --------------------------------------------------------------

    @property
    def socket(self) -> Path:
        assert self.workdir is not None, "not started"
        return self.workdir / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def netns_path(self) -> Path | None:
        return NETNS_DIR / self.netns if self.netns else None

    def env(self) -> dict[str, str]:
        """os.environ with DOCKER_HOST aimed at this dockerd, for scripts."""
        return {**os.environ, "DOCKER_HOST": self.url}

    # --- start and stop -----------------------------------------------------

    def command(self) -> list[str]:
        work = self.workdir
        assert work is not None
        args = ["dockerd",
                "--data-root", str(work / "data"),
                "--exec-root", str(work / "exec"),
                "--pidfile", str(work / "docker.pid"),
                "-H", self.url]
        if self.netns is None:
            args += ["--bridge=none", "--iptables=false", "--ip6tables=false",
                     "--ip-forward=false", "--ip-masq=false"]
        elif not self.iptables:
            args += ["--iptables=false"]
        if missing_capabilities():
            args += ["--add-runtime", f"capfilter={self._write_runc_wrapper()}",
                     "--default-runtime", "capfilter"]
        args += self.extra_args
        if self.netns_path is not None:
            args = ["nsenter", f"--net={self.netns_path}", "--"] + args
        return args

    def _write_runc_wrapper(self) -> Path:
        assert self.workdir is not None
        runc = shutil.which("runc") or "/usr/sbin/runc"
        python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
        path = self.workdir / "bin" / "runc-capfilter"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = RUNC_WRAPPER.format(names=CAPABILITIES, mask=bounding_set_mask(), runc=runc)
        path.write_text(f"#!{python}\n{body}")
        path.chmod(0o755)
        return path

    def _iptables_path_dir(self, backend: str) -> Path:
        """A directory whose iptables commands are ``backend``'s (as alternatives would make them)."""
        assert self.workdir is not None
        directory = self.workdir / f"iptables-{backend}"
        directory.mkdir(parents=True, exist_ok=True)
        for command in IPTABLES_COMMANDS:
            target = shutil.which(command.replace("tables", f"tables-{backend}"), path="/usr/sbin:/sbin")
            if target is None:
                raise DockerHostError(f"{command.replace('tables', f'tables-{backend}')} not found "
                                      "(apt-get install iptables)")
            link = directory / command
            if not link.is_symlink():
                link.symlink_to(target)
        return directory

    def _in_netns(self, *argv: str) -> None:
        assert self.netns_path is not None
        subprocess.run(["nsenter", f"--net={self.netns_path}", "--", *argv],
                       check=True, capture_output=True)

    def start(self, timeout: float = 60.0) -> "DockerHost":
        if self.process is not None:
            return self
        if self.netns_path is not None and not self.netns_path.exists():
            raise DockerHostError(f"{self.name}: no network namespace {self.netns_path}")
        self.workdir = Path(tempfile.mkdtemp(prefix=f"cdh-{self.name}-", dir=self.workdir_parent))
        try:
            env = dict(os.environ)
            env.pop("DOCKER_HOST", None)
            if self.netns is not None and self.iptables:
                if self.iptables_backend is not None:
                    env["PATH"] = (f"{self._iptables_path_dir(self.iptables_backend)}:"
                                   f"{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}")
                if self.forward_drop:
                    self._in_netns("sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
            with open(self.workdir / "dockerd.log", "wb") as log:
                self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise DockerHostError(f"{self.name}: dockerd exited with {self.process.returncode}: "
                                      f"{self.log_tail(1)}")
            if self.socket.exists():
                try:
                    client = docker.DockerClient(base_url=self.url, timeout=5)
                    client.ping()
                    self._client = client
                    return
                except Exception:  # not listening yet  # noqa: BLE001
                    pass
            if time.monotonic() > deadline:
                raise DockerHostError(f"{self.name}: dockerd did not answer within {timeout:.0f} s: "
                                      f"{self.log_tail(1)}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 20) -> str:
        if self.workdir is None:
            return ""
        try:
            text = (self.workdir / "dockerd.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """Remove every container, stop dockerd by pid, remove all it left."""
        if self.process is not None:
            if self.process.poll() is None and self._client is not None:
                try:
                    for container in self._client.containers.list(all=True):
                        container.remove(force=True)
                except Exception:  # best effort; dockerd stops them too  # noqa: BLE001
                    pass
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.workdir is not None:
            self._kill_leftovers()
            self._unmount_all()
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.process = None
        self.workdir = None

    def _kill_leftovers(self) -> None:
        """containerd or shims of this dockerd still running (named by its work dir)."""
        assert self.workdir is not None
        marker = str(self.workdir).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline:
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _unmount_all(self) -> None:
        assert self.workdir is not None
        prefix = str(self.workdir) + "/"
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            points = [line.split()[4].replace("\\040", " ") for line in handle]
        for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)

    def __enter__(self) -> "DockerHost":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # --- using it -----------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            raise DockerHostError(f"{self.name}: dockerd not started")
        return self._client

    def cli(self, *args: str) -> list[str]:
        """The argument list of a docker CLI command aimed at this dockerd."""
        return [docker_client_binary(), "-H", self.url, *args]

    def run_cli(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(self.cli(*args), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["(no output)"]
            raise DockerHostError(f"{self.name}: docker {' '.join(args[:3])}: {last[0]}")
        return result

    def has_image(self, image: str) -> bool:
        try:
            self.client.images.get(image)
            return True
        except docker.errors.ImageNotFound:
            return False

    def ensure_base_image(self) -> None:
        """debian:bookworm-slim, from the cached debootstrap tarball if need be."""
        result = subprocess.run(["bash", str(REPO / "docker" / "ensure-base-image.sh"), "-H", self.url],
                                capture_output=True, text=True, env={**os.environ, "DOCKER": docker_client_binary()})
        if result.returncode != 0:
            raise DockerHostError(result.stderr.strip().splitlines()[-1] if result.stderr.strip()
                                  else "ensure-base-image.sh failed")

    def build(self, tag: str, context: str | Path, network: str | None = "host",
              log_path: str | Path | None = None) -> float:
        """docker build (the legacy builder, as the seed); returns seconds taken."""
        args = ["build", "-t", tag]
        if network:
            args += ["--network", network]
        start = time.monotonic()
        result = subprocess.run(self.cli(*args, str(context)), capture_output=True, text=True, timeout=1800)
        if log_path is not None:
            Path(log_path).write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["(no output)"]
            raise DockerHostError(f"{self.name}: docker build {tag}: {tail[0]}")
        return time.monotonic() - start

    def image_size(self, image: str) -> int:
        return int(self.client.images.get(image).attrs["Size"])

    def load_images_from(self, source: "DockerHost", images: Iterable[str], timeout: float = 600) -> float:
        """`docker save IMAGES | docker load` from another dockerd; returns seconds."""
        images = list(images)
        start = time.monotonic()
        save = subprocess.Popen(source.cli("save", *images), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            load = subprocess.run(self.cli("load", "-q"), stdin=save.stdout, capture_output=True,
                                  text=True, timeout=timeout)
        finally:
            assert save.stdout is not None
            save.stdout.close()
            save_err = save.stderr.read().decode(errors="replace") if save.stderr else ""
            save.wait(timeout)
        if save.returncode != 0:
            raise DockerHostError(f"docker save on {source.name}: {save_err.strip()}")
        if load.returncode != 0:
            raise DockerHostError(f"docker load on {self.name}: {load.stderr.strip()}")
        missing = [image for image in images if not self.has_image(image)]
        if missing:
            raise DockerHostError(f"{self.name}: images missing after load: {', '.join(missing)}")
        return time.monotonic() - start


# The seed's prerequisite step 2, corrected: double quotes, so the shell
# substitutes the values (the seed's single quotes wrote a literal "$IP1"),
# and /g for lines naming a placeholder twice.  the README gives
# the same loop; the values come in through the environment.
SEED_SED_LOOP = r"""
for file in "$DEMO/felix.txt" "$DEMO/felix/Dockerfile" "$DEMO/bird/Dockerfile";
do
  sed -i "s/IP1/$IP1/g" "$file"
  sed -i "s/IP2/$IP2/g" "$file"
  sed -i "s/HOST1/$HOST1/g" "$file"
  sed -i "s/HOST2/$HOST2/g" "$file"
done
"""
BUILD_TREE_FILES = ("bird", "plugin", "felix", "util", "felix.txt", "network_container.sh", "make_secret.sh")


def prepare_build_tree(dest: str | Path, ip1: str | None = None, ip2: str | None = None,
                       host1: str | None = None, host2: str | None = None) -> Path:
    """A copy of what the seed copies to /opt/demo, with the sed step applied
    when the four values are given (and no cluster secret: see
    ``run_key_step``).

    The package is staged afresh from this work tree (docker/stage-package.sh
    into the copy), so the images hold the code under test even where the
    committed tarballs lag behind; the repository itself is not touched.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in BUILD_TREE_FILES:
        source = REPO / name
        if source.is_dir():
            # (Not a cluster.secret of the work tree: the test makes its own with the key step.)
            shutil.copytree(source, dest / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "cluster.secret"))
        elif source.exists():
            shutil.copy2(source, dest / name)
    stage = subprocess.run(["bash", str(REPO / "docker" / "stage-package.sh"),
                            str(dest / "bird"), str(dest / "plugin"), str(dest / "felix")],
                           capture_output=True, text=True)
    if stage.returncode != 0:
        raise DockerHostError(f"stage-package.sh: {stage.stderr.strip()}")
    if None in (ip1, ip2, host1, host2):
        return dest
    sed = subprocess.run(["bash", "-euc", SEED_SED_LOOP], capture_output=True, text=True,
                         env={**os.environ, "DEMO": str(dest), "IP1": str(ip1), "IP2": str(ip2),
                              "HOST1": str(host1), "HOST2": str(host2)})
    if sed.returncode != 0:
        raise DockerHostError(f"sed step: {sed.stderr.strip()}")
    return dest


def run_key_step(tree: str | Path) -> str:
    """The README's key step on host 1: ``sh make_secret.sh`` in the tree
    (before the sed'ed tree is built); returns what it printed."""
    result = subprocess.run(["sh", str(Path(tree) / "make_secret.sh")], capture_output=True, text=True)
    if result.returncode != 0:
        raise DockerHostError(f"make_secret.sh: {result.stderr.strip()}")
    return result.stdout


def build_images(engine: DockerHost, images: dict[str, str] | None = None,
                 log_dir: str | Path | None = None,
                 context_root: str | Path = REPO) -> dict[str, tuple[float, int]]:
    """Build the Calico images on ``engine``: {tag: (seconds, size in bytes)}.

    The base image comes first (ensure-base-image.sh).  Each image is built
    from ``context_root``/FOLDER: the repository itself (whose staged package
    the unit tests keep current), or a tree from ``prepare_build_tree``.
    """
    images = images or IMAGE_DIRS
    engine.ensure_base_image()
    figures = {}
    for tag, folder in images.items():
        log_path = Path(log_dir) / f"build-{folder}.log" if log_dir else None
        seconds = engine.build(tag, Path(context_root) / folder, log_path=log_path)
        figures[tag] = (seconds, engine.image_size(tag))
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    """Build the four images on a throwaway root-namespace engine and print figures.

    By default from a temporary copy of the repository (prepare_build_tree,
    no sed step); with --from-repo from the repository's folders as they
    are, as the seed's `docker build` lines do.
    """
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--log-dir", help="keep each image's build log here")
    parser.add_argument("--from-repo", action="store_true", help="build from the repository's folders")
    args = parser.parse_args(argv)
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cdh-tree-") as tree, DockerHost("build") as engine:
        context_root = REPO if args.from_repo else prepare_build_tree(tree)
        start = time.monotonic()
        engine.ensure_base_image()
        base = time.monotonic() - start
        print(f"{'debian:bookworm-slim':<22} {base:6.1f} s  {engine.image_size('debian:bookworm-slim') / 1e6:6.1f} MB")
        for tag, (seconds, size) in build_images(engine, log_dir=args.log_dir, context_root=context_root).items():
            print(f"{tag:<22} {seconds:6.1f} s  {size / 1e6:6.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
