#!/bin/sh
# Installs the Debian 12 packages orbitq builds with (as root; uses sudo when run as a user).
# Only missing packages are installed, so reruns are fast.
set -eu
pkgs="g++ cmake make ninja-build git xtensor-dev libxsimd-dev doctest-dev libbenchmark-dev nlohmann-json3-dev libcli11-dev libopenblas-dev python3-numpy"
[ "${ORBITQ_EXTRA_PACKAGES:-}" ] && pkgs="$pkgs $ORBITQ_EXTRA_PACKAGES"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
as_root=""
[ "$(id -u)" -eq 0 ] || as_root="sudo"
echo "installing:$missing" >&2
$as_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq --no-install-recommends $missing >/dev/null
