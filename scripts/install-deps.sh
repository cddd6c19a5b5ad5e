#!/usr/bin/env bash
# Installs the Debian packages unlade's tests and demo use, if any is missing.
set -euo pipefail
pkgs=(docker-registry skopeo umoci pigz zstd busybox-static python3-venv ca-certificates curl
      containerd debootstrap time gnupg openssl tinyproxy)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
