#!/usr/bin/env bash
# Run a built lungvol image's entry point without a container runtime: `podman run` cannot work
# in sandboxes where crun may not set rlimits, so this does what the runtime would do by hand:
#   podman create IMAGE + podman export  ->  the image's root filesystem in a folder (cached per
#   image ID), bind-mount /proc, /dev and the requested host folders into it, then chroot into it
#   as the image's USER, with the image's ENV, in its WORKDIR, and exec its ENTRYPOINT + args.
#
# Usage: scripts/run_in_image.sh [--image IMAGE] [--rootfs DIR] [--user UID[:GID]]
#                                [--mount HOST_DIR:CONTAINER_DIR]... [--] [ARGS...]
#        scripts/run_in_image.sh [--image IMAGE] --print-rootfs   (export only; print the folder)
#   e.g. scripts/run_in_image.sh --mount "$PWD/sample_data:/data/in" --mount /tmp/out:/data/out \
#          -- segment /data/in/phantom_small/dicom -o /data/out/phantom_small
# ARGS default to the image's CMD. Exit status is the entry point's. Needs root and podman.
set -euo pipefail

IMAGE="${LUNGVOL_IMAGE:-localhost/lungvol:cpu}"
CACHE_DIR="${LUNGVOL_IMAGE_CACHE:-/var/cache/lungvol-image}"
ROOTFS=""
USER_SPEC=""
MOUNTS=()
PRINT_ROOTFS=0
PODMAN=(podman --storage-driver vfs)

die() { echo "run_in_image.sh: $*" >&2; exit 125; }

while [ $# -gt 0 ]; do
  case "$1" in
    --image) IMAGE="$2"; shift 2 ;;
    --rootfs) ROOTFS="$2"; shift 2 ;;
    --user) USER_SPEC="$2"; shift 2 ;;
    --mount) MOUNTS+=("$2"); shift 2 ;;
    --print-rootfs) PRINT_ROOTFS=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    --) shift; break ;;
    *) break ;;
  esac
done

[ "$(id -u)" = 0 ] || die "must run as root (chroot and bind mounts need it)"
command -v podman >/dev/null || die "podman not found; install it: apt-get install podman"
# Shared with other runs, exclusive against scripts/build_image.sh (which prunes images).
mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/.lock"
flock -s 9
image_id="$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null)" \
  || die "image $IMAGE not found in podman (vfs) storage; build it with scripts/build_image.sh"
ROOTFS="${ROOTFS:-$CACHE_DIR/rootfs-${image_id:0:12}}"

# --- the image's root filesystem, exported once per image ID ------------------------------------
exec 8>"$CACHE_DIR/.export.lock"
flock -x 8   # one export at a time; released right after
if [ ! -f "$ROOTFS/.lungvol-exported" ]; then
  # never delete through a mount left behind by an interrupted run (/dev, the data folders)
  if awk -v r="$ROOTFS/" 'index($2 "/", r) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
    die "$ROOTFS still has mounts from an earlier run; unmount them (umount -R) first"
  fi
  rm -rf --one-file-system "$ROOTFS"
  mkdir -p "$ROOTFS"
  cid="$("${PODMAN[@]}" create "$IMAGE")"
  "${PODMAN[@]}" export "$cid" | tar --numeric-owner -xpf - -C "$ROOTFS"
  "${PODMAN[@]}" rm "$cid" >/dev/null
  echo "$image_id" >"$ROOTFS/.lungvol-exported"
  # exports of images that no longer exist only take space (~1 GB each); skip any in use
  for old in "$(dirname "$ROOTFS")"/rootfs-*; do
    [ -d "$old" ] && [ "$old" != "$ROOTFS" ] || continue
    "${PODMAN[@]}" image exists "$(cat "$old/.lungvol-exported" 2>/dev/null || echo none)" && continue
    awk -v r="$old/" 'index($2 "/", r) == 1 { found = 1 } END { exit !found }' /proc/mounts \
      && continue
    rm -rf --one-file-system "$old"
  done
fi

flock -u 8

if [ "$PRINT_ROOTFS" = 1 ]; then
  echo "$ROOTFS"
  exit 0
fi

# --- the image's runtime configuration ----------------------------------------------------------
inspect() { "${PODMAN[@]}" image inspect --format "$1" "$IMAGE"; }
mapfile -t entrypoint < <(inspect '{{range .Config.Entrypoint}}{{println .}}{{end}}' | sed '/^$/d')
mapfile -t cmd < <(inspect '{{range .Config.Cmd}}{{println .}}{{end}}' | sed '/^$/d')
mapfile -t env < <(inspect '{{range .Config.Env}}{{println .}}{{end}}' | sed '/^$/d')
workdir="$(inspect '{{.Config.WorkingDir}}')"
image_user="$(inspect '{{.Config.User}}')"
[ ${#entrypoint[@]} -gt 0 ] || die "image $IMAGE has no ENTRYPOINT"
[ $# -gt 0 ] || set -- "${cmd[@]}"

# USER may be a name or uid[:gid]; names are looked up in the image, not on this host.
spec="${USER_SPEC:-${image_user:-0}}"
user_part="${spec%%:*}"
group_part=""; [ "$spec" != "$user_part" ] && group_part="${spec#*:}"
if [[ "$user_part" =~ ^[0-9]+$ ]]; then
  uid="$user_part"
  home="$(awk -F: -v u="$uid" '$3 == u { print $6; exit }' "$ROOTFS/etc/passwd")"
  gid="$(awk -F: -v u="$uid" '$3 == u { print $4; exit }' "$ROOTFS/etc/passwd")"
else
  line="$(awk -F: -v n="$user_part" '$1 == n' "$ROOTFS/etc/passwd")"
  [ -n "$line" ] || die "user '$user_part' (image USER) is not in the image's /etc/passwd"
  uid="$(cut -d: -f3 <<<"$line")"; gid="$(cut -d: -f4 <<<"$line")"; home="$(cut -d: -f6 <<<"$line")"
fi
[ -n "$group_part" ] && gid="$group_part"
gid="${gid:-$uid}"
home="${home:-/}"

# --- mounts: /proc, /dev (incl. /dev/shm for multiprocessing), the requested folders ----------
MOUNTED=()
cleanup() {
  local i
  for (( i=${#MOUNTED[@]}-1; i>=0; i-- )); do umount -l "${MOUNTED[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
mount_bind() {  # mount_bind HOST TARGET_IN_ROOTFS
  mkdir -p "$2"
  mount --rbind "$1" "$2" || die "cannot bind-mount $1 at $2"
  MOUNTED+=("$2")
}
mkdir -p "$ROOTFS/proc"
mount -t proc proc "$ROOTFS/proc" || die "cannot mount /proc in $ROOTFS"
MOUNTED+=("$ROOTFS/proc")
mount_bind /dev "$ROOTFS/dev"
for m in "${MOUNTS[@]}"; do
  host="${m%%:*}"; target="${m#*:}"
  [ "$host" != "$m" ] && [ "${target:0:1}" = / ] || die "--mount wants HOST_DIR:/CONTAINER_DIR, got '$m'"
  [ -d "$host" ] || die "--mount source $host is not a folder"
  mount_bind "$(cd "$host" && pwd)" "$ROOTFS$target"
done

set +e
chroot --userspec="$uid:$gid" "$ROOTFS" /usr/bin/env -i "${env[@]}" HOME="$home" \
  /bin/sh -c 'cd "$1" || exit 125; shift; exec "$@"' sh "${workdir:-/}" "${entrypoint[@]}" "$@" \
  8>&- 9>&-
status=$?
set -e
exit "$status"
