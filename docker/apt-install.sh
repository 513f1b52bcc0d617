#!/bin/sh
# apt-get install the given packages, plus Debian's python3 and venv when the base image has no
# Python (a bare Debian base, as `make images` uses); python:*-slim and pytorch/pytorch have one.
set -eu
packages="$*"
python3 -c 'import ensurepip, venv' 2>/dev/null || packages="python3 python3-venv $packages"
[ -n "$packages" ] || exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update
# shellcheck disable=SC2086  # one word per package
apt-get install -y --no-install-recommends $packages
rm -rf /var/lib/apt/lists/*
