#!/bin/bash
# stage-package.sh [--rev REV | --index] [DIR...]
#
# Write the Python package's source (setup.py and calico/) as
# calico-src.tar.gz into each image folder that installs it (bird/, plugin/,
# felix/ by default, or the DIRs given).  The seed builds each image with its
# own folder as the context (`docker build -t calico:felix felix`), so the
# package has to be inside that folder; the tarballs are committed so that a
# fresh clone builds as the seed says.  Run this after changing anything
# under calico/ or setup.py: tests/unit/test_staged_package.py fails until
# the committed tarballs match the source.
#
# The tarball is deterministic: members sorted by name under calico-src/,
# mtime 0, owner and group 0, modes normalised, gzip without name or time,
# no __pycache__ or *.pyc.  Same source, same bytes.
#
# Inside a git work tree the files are those git tracks (so other people's
# untracked scratch files stay out), read from the work tree; with --rev REV
# they are read from that commit instead (e.g. --rev HEAD in a work tree that
# holds someone else's uncommitted edits); with --index from git's index,
# which is what the commit hooks in .githooks/ use, so that a commit always
# carries tarballs made from exactly the source it commits.
set -euo pipefail

PROG="stage-package"
die() { echo "$PROG: error: $*" >&2; exit 1; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
[ -f setup.py ] && [ -d calico ] || die "no setup.py and calico/ in $repo"

rev=""
from_index=""
if [ "${1:-}" = "--rev" ]; then
    [ -n "${2:-}" ] || die "--rev needs a commit"
    rev="$2"
    shift 2
elif [ "${1:-}" = "--index" ]; then
    from_index=1
    shift
fi
if [ "$#" -eq 0 ]; then
    set -- bird plugin felix
fi
# Output directories are taken relative to the repository.
outdirs=()
for dir in "$@"; do
    case "$dir" in /*) outdirs+=("$dir") ;; *) outdirs+=("$repo/$dir") ;; esac
done

srcdir=""
filelist="$(mktemp)"
trap 'rm -f "$filelist" "${tmp:-}"; [ -z "$srcdir" ] || rm -rf "$srcdir"' EXIT
if [ -n "$rev" ]; then
    git rev-parse --verify --quiet "$rev^{commit}" >/dev/null || die "no such commit: $rev"
    srcdir="$(mktemp -d)"
    git archive --format=tar "$rev" -- setup.py calico | tar -x -C "$srcdir" \
        || die "cannot read setup.py and calico/ from $rev"
    cd "$srcdir"
elif [ -n "$from_index" ]; then
    git rev-parse --is-inside-work-tree >/dev/null 2>&1 || die "--index needs a git work tree"
    srcdir="$(mktemp -d)"
    git ls-files -z -- setup.py calico | git checkout-index -z --stdin --prefix="$srcdir/" \
        || die "cannot read setup.py and calico/ from the index"
    cd "$srcdir"
    rev="index"
fi

list_sources() {
    if [ -z "$rev" ] && git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files -z -- setup.py calico
    else
        find setup.py calico -type f -print0
    fi
}

list_sources \
    | LC_ALL=C sort -z -u \
    | while IFS= read -r -d '' path; do
        case "/$path/" in
            */__pycache__/*|*.pyc/|*.pyo/|*.egg-info/*) continue ;;
        esac
        [ -f "$path" ] && printf '%s\0' "$path"
      done >"$filelist"
[ -s "$filelist" ] || die "found no source files"

for dir in "${outdirs[@]}"; do
    [ -d "$dir" ] || mkdir -p "$dir"
    out="$dir/calico-src.tar.gz"
    tmp="$out.tmp.$$"
    LC_ALL=C tar --create --format=gnu --no-recursion --null --files-from="$filelist" \
        --transform='s,^,calico-src/,' \
        --mtime=@0 --owner=0 --group=0 --numeric-owner --mode='a+rX,u+w,go-w' \
        | gzip -n -9 >"$tmp" || die "cannot write $out"
    if [ -f "$out" ] && cmp -s "$tmp" "$out"; then
        rm -f "$tmp"
        echo "$PROG: ${out#"$repo"/} unchanged"
    else
        mv -f "$tmp" "$out"
        echo "$PROG: wrote ${out#"$repo"/} ($(tr -cd '\0' <"$filelist" | wc -c) files${rev:+ from $rev})"
    fi
done
