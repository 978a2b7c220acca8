"""run_bird CONFIG [HOST]: start BIRD 2 in the foreground with a Calico config.

CONFIG is one of

* ``bird1.conf``, ``bird2.conf``, ... (the seed's form): the BIRD config for
  the first, second, ... host of the cluster, rendered now by
  ``calico-bird-config`` into /etc/bird/ from, in order of preference,
  ``CALICO_HOSTS="name=ip name=ip ..."`` (set in the image's Dockerfile for
  the seed's sed step, or with ``docker run -e``), or the cluster file
  (``CALICO_CLUSTER_FILE``, default /opt/plugin/data/felix.txt).  Values still
  holding the seed's placeholders count as unset.  With no cluster
  description a file of that name already in /etc/bird/ is used as it is;
* a cluster file (felix.txt, any path): the config for this host, picked by
  HOST or ``CALICO_BIRD_HOST`` if given, else by calico-bird-config (the host
  that owns one of this machine's addresses, else by host name);
* any other name or path: a ready BIRD config, used as it is (a bare name is
  looked up in /etc/bird/).

A rendered config logs to /var/log/bird/bird.log and to standard error (the
container's output).  The cluster settings BIRD uses, ``ipip`` and
``route_reflectors``, come from the cluster file's [global] section, or from
``CALICO_IPIP`` and ``CALICO_ROUTE_REFLECTORS`` (``docker run -e``), which
win; the config is rendered at start, so a changed setting takes effect
when the container restarts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from calico.common.cluster_env import DEFAULT_CLUSTER_FILE, ConfigError, cluster_file, hosts_from_env, is_placeholder
from calico.common.datafiles import DataFileError, Host, parse_data_file, write_file_atomically

DEFAULT_CONFIG_DIR = "/etc/bird"
CONFIG_DIR_ENV = "CALICO_BIRD_CONFIG_DIR"
LOG_DIR = "/var/log/bird"
RUN_DIR = "/run/bird"
NUMBERED_RE = re.compile(r"^bird(\d+)\.conf$")

Runner = Callable[..., subprocess.CompletedProcess]


class RunBirdError(Exception):
    """Stops run_bird with one line on standard error."""


@dataclass
class Site:
    """Where run_bird looks and what it runs: the environment, the config
    directory, and the runner of calico-bird-config (replaced in tests)."""

    env: Mapping[str, str]
    config_dir: str = DEFAULT_CONFIG_DIR
    run: Runner = field(default=subprocess.run)
    log_dir: str = LOG_DIR
    run_dir: str = RUN_DIR

    @classmethod
    def from_env(cls, env: Mapping[str, str], run: Runner = subprocess.run) -> "Site":
        return cls(env, env.get(CONFIG_DIR_ENV, DEFAULT_CONFIG_DIR), run)

    @property
    def log_file(self) -> str:
        return f"{self.log_dir}/bird.log"


# --- the cluster description (pure but for reading files) -------------------

def unfilled(text: str) -> bool:
    """A value the operator has not filled in: a seed placeholder, or a shell
    variable never expanded (the seed's sed, run with single quotes, writes
    a literal ``$IP1``)."""
    return is_placeholder(text) or "$" in text


def env_hosts(env: Mapping[str, str]) -> list[Host]:
    """CALICO_HOSTS as hosts, or [] when unset or not filled in."""
    if unfilled(env.get("CALICO_HOSTS", "")):
        return []
    try:
        return hosts_from_env(dict(env))
    except ConfigError as exc:
        raise RunBirdError(str(exc)) from None


def cluster_file_hosts(path: str) -> list[Host] | None:
    """The [felix] hosts of a cluster file in file order; None while the
    file lists none or one of them is not filled in.  Other faults of the
    file are left for calico-bird-config to report."""
    try:
        contents = parse_data_file(path)
    except DataFileError as exc:
        raise RunBirdError(f"cannot read cluster file {path}: {exc}") from None
    # A placeholder address fails its section, so it shows in that section's error line.
    if any(unfilled(host.name) for host in contents.hosts) or any(unfilled(e) for e in contents.errors):
        return None
    return contents.hosts or None


def cluster_file_text(hosts: Sequence[Host]) -> str:
    """A cluster file listing ``hosts``, for calico-bird-config."""
    return "\n".join(f"[felix {h.name}]\nip={h.ip}\nhost={h.name}\n" for h in hosts)


def looks_like_cluster_file(path: str) -> bool:
    """True for a file with a [felix ...] section (a BIRD config has none)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return any(re.match(r"\s*\[\s*felix\s", line) for line in handle)
    except OSError:
        return False


def missing_log_lines(config_text: str, log_file: str) -> list[str]:
    """The log lines a rendered config still lacks: it must log to the file
    (for the seed's -v /var/log/bird) and to standard error (docker logs)."""
    wanted = ((f'log "{log_file}" all;', re.escape(f'"{log_file}"')), ("log stderr all;", "stderr"))
    return [line for line, pattern in wanted
            if not re.search(rf"^\s*log\s+{pattern}", config_text, re.MULTILINE)]


def bird_argv(config: str, run_dir: str = RUN_DIR) -> list[str]:
    return ["bird", "-f", "-c", config, "-s", os.path.join(run_dir, "bird.ctl")]


# --- the shell ------------------------------------------------------------------

def cluster_source(site: Site) -> tuple[str, list[Host]] | None:
    """(cluster file, its hosts) from CALICO_HOSTS (written out as a file in
    the config directory) or from the cluster file; None without either."""
    hosts = env_hosts(site.env)
    if hosts:
        path = os.path.join(site.config_dir, "calico-hosts.txt")
        write_file_atomically(path, cluster_file_text(hosts))
        return path, hosts
    path = cluster_file(site.env)
    if not os.path.isfile(path):
        return None
    listed = cluster_file_hosts(path)
    return (path, listed) if listed else None


def render(site: Site, cluster_file: str, host: str | None, output: str) -> None:
    """calico-bird-config for ``host`` (None: it picks) into ``output``, logging where it must."""
    command = ["calico-bird-config", cluster_file, "--output", output, "--log-file", site.log_file]
    if host:
        command += ["--host", host]
    try:
        result = site.run(command, check=False)
    except OSError as exc:
        raise RunBirdError(f"cannot run calico-bird-config: {exc.strerror}") from None
    if result.returncode != 0:
        raise RunBirdError(f"calico-bird-config failed for {cluster_file}" + (f" (host {host})" if host else ""))
    with open(output, encoding="utf-8") as handle:
        text = handle.read()
    missing = missing_log_lines(text, site.log_file)
    if missing:
        write_file_atomically(output, "\n".join(missing) + "\n" + text)


def numbered_config(site: Site, name: str, index: int) -> str:
    """birdN.conf: the config of the cluster's N-th host, rendered now."""
    source = cluster_source(site)
    existing = os.path.join(site.config_dir, name)
    if source is None:
        if os.path.isfile(existing):
            return existing
        raise RunBirdError(
            f"{name}: no cluster description: set CALICO_HOSTS=\"name=ip name=ip\" "
            f"(docker run -e), mount the cluster file at {DEFAULT_CLUSTER_FILE} "
            f"(-v /opt/plugin:/opt/plugin) or set CALICO_CLUSTER_FILE")
    cluster_file, hosts = source
    if not 1 <= index <= len(hosts):
        raise RunBirdError(f"{name}: the cluster ({cluster_file}) lists {len(hosts)} host(s)")
    host = hosts[index - 1]
    print(f"run_bird: {name} is host {host.name} ({host.ip}) of {cluster_file}", file=sys.stderr)
    render(site, cluster_file, host.name, existing)
    return existing


def choose_config(site: Site, arg: str, host: str | None) -> str:
    """The BIRD config file to run for the command-line argument ``arg``."""
    match = NUMBERED_RE.match(arg)
    if match and "/" not in arg:
        return numbered_config(site, arg, int(match.group(1)))
    path = arg if ("/" in arg or os.path.isfile(arg)) else os.path.join(site.config_dir, arg)
    if not os.path.isfile(path):
        raise RunBirdError(f"{arg}: no such file (bare names are looked up in {site.config_dir})")
    if looks_like_cluster_file(path):
        output = os.path.join(site.config_dir, "calico.conf")
        render(site, path, host, output)
        return output
    return path


def main(argv: Sequence[str] | None = None, site: Site | None = None,
         execvp: Callable[[str, list[str]], object] = os.execvp) -> int:
    """Choose (or render) the config, then become BIRD; returns only on failure."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) not in (1, 2) or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    site = site or Site.from_env(os.environ)
    host = argv[1] if len(argv) == 2 else (site.env.get("CALICO_BIRD_HOST") or None)
    try:
        os.makedirs(site.config_dir, exist_ok=True)
        config = choose_config(site, argv[0], host)
        for directory in (site.log_dir, site.run_dir):
            os.makedirs(directory, exist_ok=True)
    except RunBirdError as exc:
        print(f"run_bird: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"run_bird: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    command = bird_argv(config, site.run_dir)
    print(f"run_bird: {' '.join(command)}", file=sys.stderr)
    sys.stderr.flush()
    execvp(command[0], command)
    return 1  # reached only when execvp is a test's stand-in


if __name__ == "__main__":
    sys.exit(main())
