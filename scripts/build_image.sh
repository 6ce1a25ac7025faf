#!/usr/bin/env bash
# Build the lungvol container image from the top-level Dockerfile on a machine with no Docker
# engine and no container registry:
#   1. debootstrap a minimal Debian bookworm root filesystem (with python3, venv, CA certs),
#   2. import it as a local base image (podman import),
#   3. podman build the Dockerfile on top of it (vfs storage, chroot isolation, host network).
# Steps 1 and 2 are cached (tarball in $LUNGVOL_IMAGE_CACHE, base image in podman storage), so a
# second run only rebuilds what changed. pip inside the build uses this machine's pip settings
# (indexes, find-links, certificate bundle): the script writes them into a temporary pip.conf
# and mounts it, plus the paths it names, read-only for the build only. Nothing of it ends up in
# the image, and the Dockerfile stays a standard one.
#
# Usage: scripts/build_image.sh [--tag IMAGE] [--rebuild-base] [--layers] [--no-cache]
#                               [--update-constraints] [-- EXTRA_PODMAN_BUILD_ARGS...]
#   By default the build commits once at the end (podman build --layers=false): vfs copies and
#   diffs the whole root filesystem at every commit, so per-instruction layers cost ~1 min each
#   here, while the whole build takes ~70 s. --layers keeps per-instruction layers as a cache.
#   e.g. scripts/build_image.sh --tag localhost/lungvol:torch -- --build-arg TORCH=torch==2.13.0
# Needs: root, podman, debootstrap (apt-get install podman debootstrap).
# Prints the image name on stdout as the last line; progress goes to stderr.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${LUNGVOL_IMAGE:-localhost/lungvol:cpu}"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_IMAGE="${LUNGVOL_BASE_IMAGE:-localhost/lungvol-base:${SUITE}}"
CACHE_DIR="${LUNGVOL_IMAGE_CACHE:-/var/cache/lungvol-image}"
ROOTFS_TAR="${CACHE_DIR}/${SUITE}-minbase.tar"
PODMAN=(podman --storage-driver vfs)
REBUILD_BASE=0
NO_CACHE=()
LAYERS=(--layers=false)
UPDATE_CONSTRAINTS=0
EXTRA=()

die() { echo "build_image.sh: $*" >&2; exit 1; }
log() { echo "build_image.sh: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --tag) IMAGE="$2"; shift 2 ;;
    --rebuild-base) REBUILD_BASE=1; shift ;;
    --no-cache) NO_CACHE=(--no-cache); shift ;;
    --layers) LAYERS=(--layers=true); shift ;;
    --update-constraints) UPDATE_CONSTRAINTS=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option '$1'; see --help" ;;
  esac
done

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and podman vfs storage need it); rerun with sudo"
command -v podman >/dev/null || die "podman not found; install it: apt-get install podman"
command -v debootstrap >/dev/null || die "debootstrap not found; install it: apt-get install debootstrap"
cd "$REPO"
[ -f Dockerfile ] || die "no Dockerfile in $REPO"

# --- pip: which pip tells us this machine's settings --------------------------------------------
PIP=()
if [ -n "${PIP_FOR_CONFIG:-}" ]; then
  read -r -a PIP <<<"$PIP_FOR_CONFIG"
elif [ -x "$REPO/.venv/bin/pip" ]; then
  PIP=("$REPO/.venv/bin/pip")
elif python3 -m pip --version >/dev/null 2>&1; then
  PIP=(python3 -m pip)
fi

if [ "$UPDATE_CONSTRAINTS" = 1 ]; then
  [ ${#PIP[@]} -gt 0 ] || die "--update-constraints needs a pip (the repo's .venv)"
  {
    echo "# Versions the lungvol image installs (pip -c): the set the test suite passed with."
    echo "# Regenerate after a dependency change: scripts/build_image.sh --update-constraints"
    "${PIP[@]}" freeze 2>/dev/null | grep -v -E '^(-e |#)' \
      | grep -v -i -E '^(lungvol|pytest|hypothesis|ruff|iniconfig|pluggy)=='
  } >scripts/image-constraints.txt
  log "wrote scripts/image-constraints.txt"
fi

# One build at a time, and none while scripts/run_in_image.sh runs an image (it holds the
# same lock shared): the prune below must not remove an image that is being exported or run.
mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/.lock"
flock -x 9
# An interrupted build (timeout, Ctrl-C) leaves its buildah working container behind: a full
# root filesystem copy under vfs. No build runs while we hold the lock, so remove them.
for cid in $("${PODMAN[@]}" ps -a --external --filter name=working-container --format '{{.ID}}' \
             2>/dev/null); do
  "${PODMAN[@]}" rm --storage "$cid" >/dev/null 2>&1 || true
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/lungvol-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# Translate `pip config list` (files and PIP_* variables) into one pip.conf for the build, and
# mount every local path it names (certificate bundle, file:// indexes, find-links folders).
BUILD_MOUNTS=()
PIP_CONF="$WORK/pip.conf"
echo "[global]" >"$PIP_CONF"
declare -A MOUNTED=()
add_mount() {  # add_mount HOST_PATH [CONTAINER_PATH]
  local host="$1" target="${2:-$1}"
  [ -e "$host" ] || return 0
  [ -n "${MOUNTED[$target]:-}" ] && return 0
  MOUNTED[$target]=1
  BUILD_MOUNTS+=(--volume "$host:$target:ro")
}
if [ ${#PIP[@]} -gt 0 ]; then
  while IFS= read -r line; do
    key="${line%%=*}"; value="${line#*=}"
    value="${value#\'}"; value="${value%\'}"
    key="${key##*.}"                       # global.cert / :env:.cert -> cert
    case "$key" in
      cert)
        grep -q '^cert = ' "$PIP_CONF" && continue
        add_mount "$value" /run/lungvol-build/ca-bundle.crt
        echo "cert = /run/lungvol-build/ca-bundle.crt" >>"$PIP_CONF" ;;
      index-url|extra-index-url|find-links|trusted-host|default-timeout|timeout|retries)
        grep -q "^$key = " "$PIP_CONF" && continue   # first source (env) wins, as in pip
        echo "$key = $value" >>"$PIP_CONF"
        for item in $value; do
          path="${item#file://}"
          [ "${path:0:1}" = / ] || continue
          # a file:// index (".../simple") lives beside its files; mount the parent folder
          case "$path" in */simple|*/simple/) add_mount "$(dirname "${path%/}")" ;; *) add_mount "$path" ;; esac
        done ;;
    esac
  done < <("${PIP[@]}" config list 2>/dev/null | LC_ALL=C sort)   # ":env:" first: env wins, as in pip
fi
if ! grep -q '^cert = ' "$PIP_CONF"; then
  for bundle in "${PIP_CERT:-}" /etc/ssl/certs/ca-certificates.crt; do
    if [ -n "$bundle" ] && [ -f "$bundle" ]; then
      add_mount "$bundle" /run/lungvol-build/ca-bundle.crt
      echo "cert = /run/lungvol-build/ca-bundle.crt" >>"$PIP_CONF"
      break
    fi
  done
fi
add_mount "$PIP_CONF" /etc/pip.conf
log "pip settings for the build: $(grep -v '^\[' "$PIP_CONF" | tr '\n' ';')"

# --- 1+2: the base image --------------------------------------------------------------------
if [ "$REBUILD_BASE" = 1 ]; then
  rm -f "$ROOTFS_TAR"
  "${PODMAN[@]}" image rm -f "$BASE_IMAGE" >/dev/null 2>&1 || true
fi
if ! "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
  if [ ! -s "$ROOTFS_TAR" ]; then
    mkdir -p "$CACHE_DIR"
    rootfs="$CACHE_DIR/rootfs.tmp"
    rm -rf "$rootfs"
    log "debootstrap --variant=minbase $SUITE from $MIRROR (a few minutes)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      "$SUITE" "$rootfs" "$MIRROR" >"$CACHE_DIR/debootstrap.log" 2>&1 \
      || die "debootstrap failed; see $CACHE_DIR/debootstrap.log (mirror $MIRROR reachable?)"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar --numeric-owner -C "$rootfs" -cf "$ROOTFS_TAR.tmp" .
    mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$rootfs"
  else
    log "reusing cached root filesystem $ROOTFS_TAR"
  fi
  log "importing $ROOTFS_TAR as $BASE_IMAGE"
  "${PODMAN[@]}" import --change 'CMD ["/bin/bash"]' "$ROOTFS_TAR" "$BASE_IMAGE" >/dev/null
else
  log "reusing base image $BASE_IMAGE"
fi

# --- 3: the lungvol image -------------------------------------------------------------------
log "podman build -t $IMAGE (BASE=$BASE_IMAGE)"
start=$(date +%s)
"${PODMAN[@]}" build --isolation chroot --network host --pull=never "${NO_CACHE[@]}" "${LAYERS[@]}" \
  --build-arg "BASE=$BASE_IMAGE" "${BUILD_MOUNTS[@]}" \
  -f Dockerfile -t "$IMAGE" "${EXTRA[@]}" . >&2
log "built $IMAGE in $(( $(date +%s) - start )) s"
# vfs stores every layer as a full copy (~1 GB here): drop images that earlier builds left
# untagged. The new image's own layers are its parents and stay, so the layer cache survives.
"${PODMAN[@]}" image prune -f >/dev/null 2>&1 || log "could not prune old images (ignored)"
echo "$IMAGE"
