#!/usr/bin/env bash
# Installs the Debian packages the benchmark needs, when they are missing
# (as .ci/deps does for the build and the tests). Does nothing when all are
# there. Debian's nginx package may try to start its own service on port 80
# when it is first installed; the benchmark never uses that one.
set -euo pipefail
packages=(
  gcc make curl valgrind nginx python3 python3-requests
  lua5.4 liblua5.4-dev libcurl4-openssl-dev lua-cjson lua-socket
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bench: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
