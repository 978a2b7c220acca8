#!/usr/bin/env bash
# Install what the demo and the tests need on a Debian host, then make the
# virtual environment.  Idempotent: a second run installs nothing.
set -euo pipefail

VENV=${VENV:-.venv}
WITH_TESTS=${WITH_TESTS:-0}
APT_PACKAGES=(iproute2 iptables ipset bird2 iputils-ping netcat-openbsd procps kmod python3-venv)
if [ "$WITH_TESTS" = 1 ]; then
    APT_PACKAGES+=(docker.io debootstrap)
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install-deps: missing Debian packages (${missing[*]}); run as root" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
extra=""
[ "$WITH_TESTS" = 1 ] && extra="[test]"
"$VENV/bin/pip" install -q -c constraints.txt -e ".$extra"
