"""The cluster's hosts given in the environment, and the seed's placeholders.

``CALICO_HOSTS="name=ip name=ip ..."`` (the first being the plugin host)
describes the cluster without a cluster file, so one Docker image serves
every site; values still holding the seed's placeholders (``IP1``,
``HOST2``: the operator skipped its sed step) count as unset.  Felix, the
status tool and the bird image's ``run_bird`` read it through here.  This
module needs neither ZeroMQ nor pyroute2: the bird image has neither.
``ConfigError`` lives here so that this module can raise it;
``calico.common.config`` re-exports it for the components.
"""

from __future__ import annotations

import re
from typing import Mapping

from calico.common.datafiles import DEFAULT_CLUSTER_FILE, Host
from calico.common.validation import ValidationError, check_hostname, parse_ip, short_hostname, shown

__all__ = ["DEFAULT_CLUSTER_FILE", "cluster_file", "PLACEHOLDER_RE", "ConfigError", "hosts_from_env", "is_placeholder"]

PLACEHOLDER_RE = re.compile(r"\b(IP|HOST)\d\b")


class ConfigError(ValueError):
    """A configuration fault that stops start-up; str() is one line."""


def is_placeholder(value: str) -> bool:
    """True for a value the seed's sed step was meant to replace."""
    return bool(PLACEHOLDER_RE.search(value))


def cluster_file(env: Mapping[str, str]) -> str:
    """The cluster file's path: ``CALICO_CLUSTER_FILE`` unless unset or empty."""
    return env.get("CALICO_CLUSTER_FILE", "").strip() or DEFAULT_CLUSTER_FILE


def hosts_from_env(env: dict[str, str]) -> list[Host]:
    """Parse ``CALICO_HOSTS="name=ip name=ip"``; placeholders count as unset."""
    text = env.get("CALICO_HOSTS", "").strip()
    if not text or is_placeholder(text):
        return []
    hosts = []
    for item in text.replace(",", " ").split():
        name, sep, ip = item.partition("=")
        try:
            if not sep:
                raise ValidationError("want name=ip")
            hosts.append(Host(check_hostname(short_hostname(name)), str(parse_ip(ip, allow_loopback=True))))
        except ValidationError as exc:
            raise ConfigError(f"environment CALICO_HOSTS item {shown(item)}: {exc}") from None
    return hosts
