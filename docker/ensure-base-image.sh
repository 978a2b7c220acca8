#!/bin/bash
# ensure-base-image.sh [DOCKER_GLOBAL_ARGS...]
#
# Make sure the docker engine has `debian:bookworm-slim`, the base of every
# Calico image.  Where no registry is reachable the image is made here:
# debootstrap (variant minbase) builds a slimmed bookworm root file system,
# the tarball is cached under /var/cache/calico/, and `docker import` loads it
# under the tag.  The cache means a second engine (each test host has its own
# dockerd) gets the image in seconds without running debootstrap again.
#
# Which engine: the arguments are docker's global options, e.g.
#     docker/ensure-base-image.sh -H unix:///tmp/host1/docker.sock
# and DOCKER_HOST is honoured as by docker itself.
#
# Environment (all optional):
#   CALICO_CACHE_DIR        cache directory (default /var/cache/calico)
#   CALICO_DEBIAN_MIRROR    mirror for debootstrap (default http://deb.debian.org/debian)
#   CALICO_BASE_TRY_PULL=1  try `docker pull debian:bookworm-slim` first
#   CALICO_BASE_REFRESH=1   rebuild the cached root file system
#   DOCKER                  docker client to run (default: docker)
#
# Idempotent: an engine that already has the image is left alone.  Exits 0 when
# the image is there at the end, 1 with one line on stderr otherwise.
set -euo pipefail

IMAGE="debian:bookworm-slim"
SUITE="bookworm"
CACHE_DIR="${CALICO_CACHE_DIR:-/var/cache/calico}"
MIRROR="${CALICO_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TARBALL="$CACHE_DIR/debian-$SUITE-slim-rootfs.tar.gz"
BUILD_LOG="$CACHE_DIR/debian-$SUITE-slim-debootstrap.log"
DOCKER_CMD=("${DOCKER:-docker}" "$@")
PROG="ensure-base-image"

die() { echo "$PROG: error: $*" >&2; exit 1; }
say() { echo "$PROG: $*" >&2; }

engine_reachable() {
    "${DOCKER_CMD[@]}" version --format '{{.Server.Version}}' >/dev/null 2>&1
}

image_present() {
    "${DOCKER_CMD[@]}" image inspect "$IMAGE" >/dev/null 2>&1
}

# --- root file system -------------------------------------------------------

ROOTFS_DIR=""

cleanup_rootfs() {
    [ -n "$ROOTFS_DIR" ] && [ -d "$ROOTFS_DIR" ] || return 0
    # debootstrap mounts /proc and /sys inside the target; a failed run can
    # leave them behind.  Unmount (deepest first) before removing anything.
    local mnt
    { findmnt -rn -o TARGET | grep -F -- "$ROOTFS_DIR/" | sort -r || true; } | while read -r mnt; do
        umount -l -- "$mnt" 2>/dev/null || true
    done
    rm -rf --one-file-system -- "$ROOTFS_DIR"
}

slim_rootfs() {
    local root="$1"
    # Keep future package installs slim, as Debian's own docker images do.
    mkdir -p "$root/etc/dpkg/dpkg.cfg.d" "$root/etc/apt/apt.conf.d"
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
# Written by calico docker/ensure-base-image.sh: no docs, man pages or locales.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
    echo 'Acquire::GzipIndexes "true";' >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
    echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
    # Services must not start while an image is being built.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"

    # Package sources: the release, its updates and security.
    rm -f "$root/etc/apt/sources.list"
    local security="${MIRROR%/debian}/debian-security"
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

    # Drop what the exclusions above would have kept out.
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/groff/* "$root"/usr/share/info/* \
           "$root"/usr/share/lintian/* "$root"/usr/share/linda/*
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
        -exec rm -rf {} + 2>/dev/null || true
    # Caches, package lists, logs and host-specific files.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
           "$root"/var/lib/dpkg/*-old "$root"/var/log/* "$root"/tmp/* "$root"/var/tmp/*
    mkdir -p "$root/var/lib/apt/lists/partial" "$root/var/cache/apt/archives/partial"
    rm -f "$root/etc/resolv.conf" "$root/etc/hostname"   # docker provides them
    : >"$root/etc/machine-id"
}

build_rootfs_tarball() {
    command -v debootstrap >/dev/null 2>&1 \
        || die "$IMAGE is missing and debootstrap is not installed (apt-get install debootstrap)"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root to build $IMAGE"
    mkdir -p "$CACHE_DIR" || die "cannot create cache directory $CACHE_DIR"

    ROOTFS_DIR="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
    trap cleanup_rootfs EXIT
    say "building $SUITE rootfs with debootstrap from $MIRROR (log: $BUILD_LOG)"
    local start=$SECONDS
    if ! debootstrap --variant=minbase --arch="$(dpkg --print-architecture)" \
            "$SUITE" "$ROOTFS_DIR" "$MIRROR" >"$BUILD_LOG" 2>&1; then
        die "debootstrap failed: $(tail -n 1 "$BUILD_LOG") (full log: $BUILD_LOG)"
    fi
    slim_rootfs "$ROOTFS_DIR"

    local tmp="$TARBALL.tmp.$$"
    tar --numeric-owner --xattrs --xattrs-include='security.capability' \
        --sort=name -C "$ROOTFS_DIR" -cf - . | gzip -n >"$tmp" \
        || { rm -f "$tmp"; die "cannot write $TARBALL"; }
    mv -f "$tmp" "$TARBALL"
    cleanup_rootfs
    trap - EXIT
    say "cached $TARBALL ($(du -h "$TARBALL" | cut -f1), $((SECONDS - start)) s)"
}

# --- main -------------------------------------------------------------------

command -v "${DOCKER_CMD[0]}" >/dev/null 2>&1 || die "docker client '${DOCKER_CMD[0]}' not found"
engine_reachable || die "cannot reach the docker engine (docker ${*:-}${DOCKER_HOST:+ DOCKER_HOST=$DOCKER_HOST}); is dockerd running?"

if image_present && [ "${CALICO_BASE_REFRESH:-0}" != 1 ]; then
    say "$IMAGE already present"
    exit 0
fi

if [ "${CALICO_BASE_TRY_PULL:-0}" = 1 ] && "${DOCKER_CMD[@]}" pull "$IMAGE" >/dev/null 2>&1; then
    say "pulled $IMAGE"
    exit 0
fi

mkdir -p "$CACHE_DIR" || die "cannot create cache directory $CACHE_DIR"
# One debootstrap at a time: a second caller waits, then finds the cache.
exec 9>"$CACHE_DIR/.ensure-base-image.lock"
flock 9
if [ ! -s "$TARBALL" ] || [ "${CALICO_BASE_REFRESH:-0}" = 1 ]; then
    build_rootfs_tarball
else
    say "using cached $TARBALL"
fi

say "importing $IMAGE"
"${DOCKER_CMD[@]}" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["bash"]' \
    --message "debootstrap --variant=minbase $SUITE $MIRROR (calico ensure-base-image.sh)" \
    "$TARBALL" "$IMAGE" >/dev/null \
    || die "docker import of $TARBALL as $IMAGE failed"
image_present || die "$IMAGE still missing after import"
say "$IMAGE ready"
