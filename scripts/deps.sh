#!/usr/bin/env bash
# Installs the Debian packages the build, tests and `make run` need, only
# where something is missing. Safe to run repeatedly.
set -euo pipefail
pkgs=(build-essential cmake pkg-config libnng-dev nng-utils libmsgpack-dev libpq-dev
      libcurl4-openssl-dev libyaml-dev libmicrohttpd-dev libjansson-dev libjwt-dev
      libcmocka-dev postgresql postgresql-client tzdata curl procps iproute2 ca-certificates
      prometheus docker-compose chromium nodejs
      "$@")
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
