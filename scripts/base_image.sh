#!/usr/bin/env bash
# Makes sure the runtime images' base is in the local Docker and prints its
# name: Debian's debian:bookworm-slim where a registry supplies it, else one
# made from Debian's packages (debootstrap --variant=minbase, as Debian's own
# images are made) and imported under the project's own name,
# dnet/debian-base:bookworm-minbase, so that it never stands in for Debian's
# image for any other build on the host. The root filesystem is cached as a
# tar in $DNET_CACHE/images, so it is made once per machine.
#   scripts/base_image.sh
set -euo pipefail
DEBIAN=debian:bookworm-slim
NAME=dnet/debian-base:bookworm-minbase
DOCKER=${DNET_DOCKER:-/usr/bin/docker}
CACHE=${DNET_CACHE:-$HOME/.cache/dnet}/images
TAR=$CACHE/bookworm-minbase.tar
say() { echo "[images] $*" >&2; }

# An earlier version imported its own base as debian:bookworm-slim: take
# that name back (an import says so in its comment; Debian's images are not
# imports), so Debian's image is pulled again where a registry answers.
case "$("$DOCKER" image inspect -f '{{.Comment}}' "$DEBIAN" 2>/dev/null)" in
  "Imported from"*)
    "$DOCKER" image rm "$DEBIAN" >/dev/null
    say "untagged $DEBIAN, which an earlier make images had made from Debian's packages"
    ;;
esac
if "$DOCKER" image inspect "$DEBIAN" >/dev/null 2>&1 || timeout 60 "$DOCKER" pull -q "$DEBIAN" >/dev/null 2>&1; then
  echo "$DEBIAN"
  exit 0
fi
if "$DOCKER" image inspect "$NAME" >/dev/null 2>&1; then
  echo "$NAME"
  exit 0
fi
if [ ! -f "$TAR" ]; then
  command -v debootstrap >/dev/null || { say "debootstrap is missing (apt-get install debootstrap)"; exit 1; }
  mkdir -p "$CACHE"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  say "no registry supplies $DEBIAN: making $NAME from Debian's packages (debootstrap, about a minute)"
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 20 "$CACHE/debootstrap.log"; exit 1; }
  # What Debian's slim images leave out, now and in later installs (as
  # debuerreotype's slimify does): documentation but copyrights, manuals,
  # locales; and downloaded packages and package lists.
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
CFG
  find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/{groff,info,linda,lintian/overrides,locale,man}/*
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*
  tar -C "$root" -c . >"$TAR.part"
  mv "$TAR.part" "$TAR"
fi
# The configuration Debian's image carries, which an import does not.
"$DOCKER" import --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --change 'CMD ["bash"]' --change 'LABEL org.dnet.base=debootstrap' "$TAR" "$NAME" >/dev/null
say "imported $NAME from $TAR"
echo "$NAME"
