#!/bin/sh
# Copies into DEST the shared libraries under SITE that the programs load
# (their `ldd` closure), each at its path relative to SITE, so that the
# libraries' own run-paths ($ORIGIN/../../nvidia/...) still resolve. The
# system's libraries (libc, libstdc++, ...) are the image base's. Fails,
# naming it, on a library the loader cannot find.
#   docker/closure.sh SITE DEST PROGRAM...
# Used by the images' build stage and by scripts/images.sh (host path), so
# a runtime image holds the programs and exactly what they load, not all of
# PyTorch's wheel.
set -eu
# Both sides as given, `..` resolved, symlinks kept: ldd reports the paths
# the run-paths name, which may pass through a symlink.
site=$(realpath -s "$1")
dest=$2
shift 2
listing=$(for program in "$@"; do ldd "$program"; done)
if echo "$listing" | grep -q "not found"; then
  echo "closure.sh: libraries not found:" >&2
  echo "$listing" | grep "not found" >&2
  exit 1
fi
echo "$listing" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u | while read -r library; do
  # Resolve `..` but keep the name the loader asked for (often a symlink's).
  path=$(realpath -s "$library")
  case "$path" in
    "$site"/*) ;;
    *) continue ;;
  esac
  relative=${path#"$site"/}
  mkdir -p "$dest/$(dirname "$relative")"
  # A hard link where DEST shares SITE's file system (the host path), else a copy.
  cp -lL "$path" "$dest/$relative" 2>/dev/null || cp -L "$path" "$dest/$relative"
done
