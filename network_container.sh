#!/bin/bash
# network_container.sh CID IP GROUP      attach a running container to Calico
# network_container.sh --detach CID      undo it: endpoint file and interface
#
# For a Docker host with only Docker and iproute2 (the seed's hosts ran
# CoreOS, which has no Python).  The script checks what is cheap to check
# here -- the container exists, runs and was started with --net=none; the
# address and group names look right; the data directory and the calico:felix
# image are there -- and then runs the one attach code path, `calico-attach`,
# inside the calico:felix image:
#
#   docker run --rm --net=host --pid=host --privileged -v DATA_DIR:DATA_DIR \
#       calico:felix calico-attach attach --pid <the container's pid> \
#       --id <full container id> --ip IP --group GROUP --data-dir DATA_DIR
#
# --net=host puts the veth's host end (tap + CID[:11]) in the host's
# namespace; --pid=host lets it find the container's namespace as
# /proc/PID/ns/net.  calico-attach checks the rest (the address is inside the
# pool and not used by another endpoint file, the tap name is free, the
# container has no eth0 yet), then creates the veth pair, gives eth0 the /32
# and a default route, and writes DATA_DIR/<ip with _ for .>.txt atomically.
# On any failure it prints one line and changes nothing; so does this script.
#
# This host's name (written into the endpoint file) is resolved as Felix
# resolves it: CALICO_FELIX_HOSTNAME, else the host of CALICO_HOSTS (the
# image's, or yours) or of DATA_DIR/felix.txt that owns one of this host's
# addresses, else `hostname` up to the first dot.
#
# IP and GROUP may each be a comma-separated list (several addresses, several
# groups).  Environment (all optional):
#   CALICO_DATA_DIR        data directory (default /opt/plugin/data)
#   CALICO_FELIX_IMAGE     image holding calico-attach (default calico:felix)
#   CALICO_FELIX_HOSTNAME  this host's name, as in felix.txt
#   CALICO_HOSTS           "name=ip name=ip ..." overriding the image's
#   CALICO_POOL            allowed pool(s), comma-separated (default: the
#                          pool and pool6 of DATA_DIR/felix.txt, else
#                          192.168.0.0/16 and the default IPv6 pool)
#   DOCKER_HOST            which engine, as for docker itself
#   DOCKER                 docker client to run (default docker)
#
# Endpoint files written on a host other than the plugin's (host 1) must be
# copied into host 1's data directory (the seed's scp step); detaching there
# means deleting the copy too.
set -euo pipefail

PROG="network_container.sh"
DOCKER_BIN="${DOCKER:-docker}"
IMAGE="${CALICO_FELIX_IMAGE:-calico:felix}"
DATA_DIR="${CALICO_DATA_DIR:-/opt/plugin/data}"
GROUP_RE='^[A-Za-z0-9_.-]{1,64}$'
IPV4_RE='^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$'
IPV6_RE='^[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*$'

die() { echo "$PROG: error: $*" >&2; exit 1; }

usage() {
    cat <<EOF
usage: $PROG CID IP GROUP       attach running container CID (started with --net=none)
       $PROG --detach CID       remove its interface and its endpoint file
IP and GROUP may be comma-separated lists.  Data directory: \$CALICO_DATA_DIR
(default /opt/plugin/data).  See the comments at the top of this script.
EOF
}

check_ips() {
    local item
    [ -n "$1" ] || die "no IP given"
    IFS=, read -r -a items <<<"$1"
    for item in "${items[@]}"; do
        [[ "$item" =~ $IPV4_RE || "$item" =~ $IPV6_RE ]] \
            || die "bad IP '$item' (want an IPv4 or IPv6 address, e.g. 192.168.1.1)"
    done
}

check_groups() {
    local item
    [ -n "$1" ] || die "no GROUP given"
    IFS=, read -r -a items <<<"$1"
    for item in "${items[@]}"; do
        [[ "$item" =~ $GROUP_RE ]] \
            || die "bad group name '$item' (want 1-64 of A-Z a-z 0-9 _ . -)"
    done
}

check_docker() {
    command -v "$DOCKER_BIN" >/dev/null 2>&1 || die "docker client '$DOCKER_BIN' not found"
    "$DOCKER_BIN" version --format '{{.Server.Version}}' >/dev/null 2>&1 \
        || die "cannot reach the docker engine${DOCKER_HOST:+ at $DOCKER_HOST}; is dockerd running?"
    "$DOCKER_BIN" image inspect "$IMAGE" >/dev/null 2>&1 \
        || die "image $IMAGE is missing on this engine (build it from the repository's felix/ folder: docker build -t $IMAGE felix)"
}

check_data_dir() {
    [ -d "$DATA_DIR" ] || die "data directory $DATA_DIR does not exist (mkdir -p $DATA_DIR)"
    DATA_DIR="$(cd "$DATA_DIR" && pwd -P)"
}

# inspect CID: sets CID_FULL, CID_NAME, CID_RUNNING, CID_PID, CID_NETMODE; fails if no such container.
inspect_container() {
    local out
    [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "bad container id or name '$1'"
    out="$("$DOCKER_BIN" inspect --type container \
            --format '{{.Id}} {{.State.Running}} {{.State.Pid}} {{.HostConfig.NetworkMode}} {{.Name}}' \
            -- "$1" 2>/dev/null)" || return 1
    read -r CID_FULL CID_RUNNING CID_PID CID_NETMODE CID_NAME <<<"$out"
    CID_NAME="${CID_NAME#/}"
}

# Run calico-attach in the felix image; pass its one line through.
run_attach_code() {
    local env_args=() errfile rc
    local var
    for var in CALICO_FELIX_HOSTNAME CALICO_HOSTS; do
        [ -n "${!var:-}" ] && env_args+=(-e "$var")
    done
    errfile="$(mktemp)"
    rc=0
    "$DOCKER_BIN" run --rm --net=host --pid=host --privileged --log-driver=none \
        -v "$DATA_DIR:$DATA_DIR" "${env_args[@]}" \
        "$IMAGE" calico-attach "$@" --data-dir "$DATA_DIR" 2>"$errfile" || rc=$?
    if [ "$rc" != 0 ]; then
        local line
        line="$(grep -v -e '^[[:space:]]*$' -e "^See 'docker run --help'" "$errfile" | tail -n 1 || true)"
        rm -f "$errfile"
        line="${line#calico-attach: }"
        die "${line:-calico-attach failed with status $rc}"
    fi
    rm -f "$errfile"
}

attach() {
    local cid="$1" ip="$2" group="$3"
    check_ips "$ip"
    check_groups "$group"
    check_data_dir
    check_docker
    inspect_container "$cid" || die "no container '$cid' (see docker ps)"
    [ "$CID_RUNNING" = true ] && [ "$CID_PID" -gt 0 ] || die "container $cid ($CID_NAME) is not running"
    [ "$CID_NETMODE" = none ] \
        || die "container $cid ($CID_NAME) was started with --net=$CID_NETMODE; Calico attaches only --net=none containers"
    local pool_args=() pool
    if [ -n "${CALICO_POOL:-}" ]; then
        IFS=, read -r -a pools <<<"$CALICO_POOL"
        for pool in "${pools[@]}"; do pool_args+=(--pool "$pool"); done
    fi
    run_attach_code attach --pid "$CID_PID" --id "$CID_FULL" --ip "$ip" --group "$group" "${pool_args[@]}"
    echo "$PROG: container $CID_NAME (${CID_FULL:0:12}) is on the Calico network as $ip, group $group"
}

# The full endpoint id for CID: from docker, else (container already gone)
# the one endpoint file whose id starts with CID.
endpoint_id_for() {
    local cid="$1"
    if inspect_container "$cid"; then
        echo "$CID_FULL"
        return
    fi
    [[ "$cid" =~ ^[0-9a-f]{1,64}$ ]] || die "no container '$cid' and it is not a container id"
    local ids
    ids="$(grep -h -E "^[[:space:]]*id[[:space:]]*=[[:space:]]*$cid" -- "$DATA_DIR"/*.txt 2>/dev/null \
            | sed -E 's/^[[:space:]]*id[[:space:]]*=[[:space:]]*//; s/[[:space:]]*$//' | sort -u || true)"
    case "$(printf '%s' "$ids" | grep -c . || true)" in
        0) die "no container '$cid' and no endpoint file in $DATA_DIR with an id starting $cid" ;;
        1) echo "$ids" ;;
        *) die "'$cid' matches several endpoint ids in $DATA_DIR; give more of the id" ;;
    esac
}

detach() {
    local cid="$1" full
    check_data_dir
    check_docker
    full="$(endpoint_id_for "$cid")"
    run_attach_code detach --id "$full"
}

case "${1:-}" in
    -h|--help)
        usage
        exit 0
        ;;
    --detach)
        [ "$#" -eq 2 ] || die "--detach takes one argument, CID (see --help)"
        detach "$2"
        ;;
    *)
        [ "$#" -eq 3 ] || die "want CID IP GROUP, or --detach CID (see --help)"
        attach "$1" "$2" "$3"
        ;;
esac
