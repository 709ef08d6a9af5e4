#!/usr/bin/env bash
# Set-up for hmmlab: npm dependencies, then a WebGPU adapter.
# Idempotent and quick when everything is in place; run by `npm start` and `npm test` first.
#
# Where Dawn finds no adapter and we are root on Debian or Ubuntu, install Mesa's lavapipe
# (a Vulkan driver that runs on the CPU). Debian 12's own Mesa 22 is too old for Dawn, so on
# bookworm we add the backports suite, derived from the machine's own Debian apt sources, so that
# no mirror host is written here.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'hmmlab setup: %s\n' "$*" >&2; }

# 1. npm dependencies: install when node_modules is missing or older than the lock file.
if [ ! -d node_modules/webgpu ] || [ ! -d node_modules/.bin ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "installing npm dependencies (npm ci)"
  npm ci --no-audit --no-fund >&2
fi

export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
probe() { node scripts/probe-adapter.mjs >&2 2>/dev/null; }
if probe; then
  exit 0
fi

log "no WebGPU adapter found"
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  cat >&2 <<'MSG'
hmmlab setup: hmmlab needs a WebGPU adapter (Vulkan on Linux).
  - On a machine with a GPU: install its Vulkan driver (NVIDIA: the proprietary driver with
    libnvidia-gl / nvidia-vulkan-icd; AMD/Intel: mesa-vulkan-drivers) and libvulkan1.
  - Without a GPU: install Mesa 24 or newer's lavapipe (packages libvulkan1 and mesa-vulkan-drivers;
    on Debian 12 from bookworm-backports). Run this script as root on Debian/Ubuntu to do it for you.
MSG
  exit 1
fi

. /etc/os-release
codename="${VERSION_CODENAME:-}"
export DEBIAN_FRONTEND=noninteractive
target=()
if [ "${ID:-}" = debian ] && [ "$codename" = bookworm ]; then
  bp="${codename}-backports"
  if ! grep -rqs "$bp" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding the $bp suite, derived from this machine's Debian sources"
    if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
      # deb822: copy the stanza whose Suites name $codename (not the security archive), with Suites changed.
      awk -v code="$codename" -v bp="$bp" '
        BEGIN { RS=""; ORS="\n\n" }
        /(^|\n)Suites:[^\n]*[ \t]/ && $0 ~ ("Suites:[^\n]*[ \t]" code "([ \t]|\n|$)") && $0 !~ /security/ {
          out = ""
          n = split($0, lines, "\n")
          for (i = 1; i <= n; i++) {
            if (lines[i] ~ /^Suites:/) lines[i] = "Suites: " bp
            if (lines[i] ~ /^#/) continue
            out = out lines[i] "\n"
          }
          printf "%s\n", out
          exit
        }' /etc/apt/sources.list.d/*.sources >/etc/apt/sources.list.d/hmmlab-backports.sources
      [ -s /etc/apt/sources.list.d/hmmlab-backports.sources ] || rm -f /etc/apt/sources.list.d/hmmlab-backports.sources
    fi
    if [ ! -f /etc/apt/sources.list.d/hmmlab-backports.sources ] && [ -f /etc/apt/sources.list ]; then
      # one-line format: the first "deb URI bookworm COMPONENTS" line, with the suite changed.
      grep -E "^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?[^[:space:]]+[[:space:]]+${codename}[[:space:]]" /etc/apt/sources.list |
        grep -v security | head -n 1 | sed -E "s/[[:space:]]${codename}[[:space:]]/ ${bp} /" >/etc/apt/sources.list.d/hmmlab-backports.list || true
      [ -s /etc/apt/sources.list.d/hmmlab-backports.list ] || rm -f /etc/apt/sources.list.d/hmmlab-backports.list
    fi
    if ! grep -rqs "$bp" /etc/apt/sources.list /etc/apt/sources.list.d/; then
      log "could not derive a $bp entry from /etc/apt/sources.list*: add $bp by hand"
      exit 1
    fi
  fi
  target=(-t "$bp")
fi

log "installing libvulkan1 and mesa-vulkan-drivers ${target[*]:-}"
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${target[@]}" libvulkan1 mesa-vulkan-drivers >&2

if probe; then
  log "software GPU ready"
  exit 0
fi
log "installed Mesa's lavapipe, but Dawn still finds no adapter; run: node scripts/probe-adapter.mjs"
exit 1
