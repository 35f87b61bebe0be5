#!/usr/bin/env bash
# Debian packages nerloop needs besides Python ones: WordNet for synonym augmentation, Chromium for
# the dashboard's browser test. Installs only what is missing; needs root (or sudo) when it must.
set -euo pipefail
packages=(wordnet-base wordnet-sense-index chromium chromium-driver)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
    echo "system-deps: not a Debian system; install these yourself: ${missing[*]}" >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
