#!/usr/bin/env bash
# Makes sure Debian's Chromium is installed (the portal page's browser tests drive it). As root
# it installs it with apt-get; otherwise with sudo, if there is one.
set -euo pipefail
if [ -x /usr/lib/chromium/chromium ]; then
  exit 0
fi
echo "installing chromium (Debian package) for the browser tests"
sudo=""
if [ "$(id -u)" != 0 ]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq chromium >/dev/null
test -x /usr/lib/chromium/chromium
