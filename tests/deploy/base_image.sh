#!/bin/sh
# Build the local base image of the container tests: a Debian minbase with Python 3 (venv,
# pip) and CA certificates, made with debootstrap from Debian's package mirror and imported
# into the container engine as $IMAGE. Users build their images FROM python:3.11-slim
# instead (the Dockerfile's BASE argument); no registry but the package indexes is reachable
# here, so no base image can be pulled.
#
#   sh tests/deploy/base_image.sh [IMAGE] [ENGINE]
#
# Nothing happens when the image already exists.
set -eu
IMAGE=${1:-localhost/cvdeploy-base:bookworm}
ENGINE=${2:-podman}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
if [ "$ENGINE" = podman ]; then
    ENGINE="podman --cgroup-manager=cgroupfs --runtime=runc"
fi
if $ENGINE image exists "$IMAGE" 2>/dev/null || $ENGINE image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE already exists"
    exit 0
fi
command -v debootstrap >/dev/null || {
    echo "debootstrap is not installed: apt-get install -y --no-install-recommends debootstrap" >&2
    exit 2
}
ROOT=$(mktemp -d "${TMPDIR:-/var/tmp}/cvdeploy-rootfs.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT INT TERM
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || { tail -20 "$ROOT.log" >&2; rm -f "$ROOT.log"; exit 1; }
rm -f "$ROOT.log"
# Slim it the way Debian's docker images are slimmed: no apt lists, caches, docs or man pages.
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/usr/share/doc/* \
    "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/usr/share/locale/*
tar -C "$ROOT" -c . | $ENGINE import --change 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
echo "imported $IMAGE"
