#!/bin/sh
# The cluster's key step (README, "Deploying on real hosts with Docker").
#
# Run once, on host 1, before building the images:
#
#     sh /opt/demo/make_secret.sh
#
# It writes one fresh cluster secret (32 random bytes as 64 hex digits, from
# /dev/urandom) into the image folders, felix/cluster.secret and
# plugin/cluster.secret (mode 600), unless they already hold one, and prints
# the line that copies it to the other hosts.  The felix and plugin images
# install it as /etc/calico/cluster.secret; every component derives its
# CURVE keys from it (calico/common/security.py), so a host added later
# needs nothing but the same file.  Nothing here needs Python.
set -eu

DEMO=$(cd "$(dirname "$0")" && pwd)
FELIX_SECRET="$DEMO/felix/cluster.secret"
PLUGIN_SECRET="$DEMO/plugin/cluster.secret"
umask 077

well_formed() {
    [ "$(grep -c '' "$1")" -eq 1 ] && grep -Eqx '[0-9a-f]{64}' "$1"
}

for existing in "$FELIX_SECRET" "$PLUGIN_SECRET"; do
    if [ -e "$existing" ] && ! well_formed "$existing"; then
        echo "make_secret.sh: error: $existing is not 64 lower-case hex digits on one line; remove it and run again" >&2
        exit 1
    fi
done
if [ -e "$FELIX_SECRET" ] && [ -e "$PLUGIN_SECRET" ] && ! cmp -s "$FELIX_SECRET" "$PLUGIN_SECRET"; then
    echo "make_secret.sh: error: $FELIX_SECRET and $PLUGIN_SECRET differ; remove both and run again" >&2
    exit 1
fi

if [ -e "$FELIX_SECRET" ]; then
    source_file=$FELIX_SECRET
    made="kept the existing cluster secret"
elif [ -e "$PLUGIN_SECRET" ]; then
    source_file=$PLUGIN_SECRET
    made="kept the existing cluster secret"
else
    secret=$(od -An -v -tx1 -N32 /dev/urandom | tr -d ' \n')
    if [ "${#secret}" -ne 64 ]; then
        echo "make_secret.sh: error: could not read 32 random bytes from /dev/urandom" >&2
        exit 1
    fi
    printf '%s\n' "$secret" >"$FELIX_SECRET"
    source_file=$FELIX_SECRET
    made="wrote a new cluster secret"
fi
for target in "$FELIX_SECRET" "$PLUGIN_SECRET"; do
    [ "$target" = "$source_file" ] || [ -e "$target" ] || cp "$source_file" "$target"
    chmod 600 "$target"
done
echo "make_secret.sh: $made: $FELIX_SECRET and $PLUGIN_SECRET (mode 600)"

# The other hosts, from felix.txt once the sed step has filled it in (the
# first host is this one); without them, a line to fill in.
others=$(sed -n 's/^[[:space:]]*ip[[:space:]]*=[[:space:]]*\([0-9A-Fa-f.:]*\)[[:space:]]*$/\1/p' "$DEMO/felix.txt" 2>/dev/null | tail -n +2)
echo "Copy it to every other host before building the images there:"
if [ -n "$others" ]; then
    for ip in $others; do
        echo "  scp -p $FELIX_SECRET root@$ip:$DEMO/felix/"
    done
else
    echo "  scp -p $FELIX_SECRET root@OTHER_HOST:$DEMO/felix/"
fi
