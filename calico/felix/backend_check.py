"""Start-up check: is someone (Docker) filtering FORWARD in the *nft* backend?

Felix programs the legacy iptables backend.  On a host whose ``iptables``
is the nft variant, Docker puts its FORWARD policy DROP (and its rules) in
nft, where a packet Felix ACCEPTed in legacy is still dropped: containers
on Felix's network then silently cannot talk.  Felix cannot fix that
itself; it says so once, clearly, at start.  The check reads with
``iptables-nft-save`` / ``ip6tables-nft-save`` (argument lists) when they
are installed, and never fails start-up.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from calico.felix.tools import Runner, ToolError, run_tool

log = logging.getLogger(__name__)

_NFT_SAVE = {4: "iptables-nft-save", 6: "ip6tables-nft-save"}

ADVICE = ("Docker and Felix must use the same iptables backend (Felix uses legacy): switch with "
          "`update-alternatives --set iptables /usr/sbin/iptables-legacy` (and ip6tables likewise), "
          "then restart dockerd")


def nft_forward_filtering(save_output: str) -> str | None:
    """What in an nft filter table would drop forwarded traffic, or None."""
    in_filter = False
    policy_drop = False
    rules = 0
    for line in save_output.splitlines():
        if line.startswith("*"):
            in_filter = line == "*filter"
        elif in_filter and line.startswith(":FORWARD "):
            policy_drop = line.split()[1] == "DROP"
        elif in_filter and line.startswith("-A FORWARD "):
            rules += 1
    if not (policy_drop or rules):
        return None
    parts = (["policy DROP"] if policy_drop else []) + ([f"{rules} rule(s)"] if rules else [])
    return " and ".join(parts)


def check_backends(versions: tuple[int, ...] = (4, 6), runner: Runner = subprocess.run,
                   which=shutil.which) -> list[str]:
    """Log one WARNING per family whose nft FORWARD chain filters; return them."""
    warnings = []
    for version in versions:
        tool = _NFT_SAVE[version]
        if which(tool) is None:
            continue
        try:
            output = run_tool([tool, "-t", "filter"], runner=runner, timeout=30)
        except (ToolError, OSError, subprocess.TimeoutExpired) as exc:
            log.debug("could not read the nft backend with %s: %s", tool, exc)
            continue
        found = nft_forward_filtering(output)
        if found:
            message = (f"the nft iptables backend has a FORWARD chain with {found} (Docker's?) for "
                       f"IPv{version}: traffic Felix accepts in the legacy backend may still be dropped "
                       f"there. {ADVICE}")
            log.warning(message)
            warnings.append(message)
    return warnings
