#!/usr/bin/env bash
# Install the Debian packages named as arguments when their binaries are missing.
# Package -> binary it provides: graphviz -> dot, chromium -> chromium.
set -euo pipefail
missing=()
for pkg in "$@"; do
  case "$pkg" in
    graphviz) bin=dot ;;
    *) bin=$pkg ;;
  esac
  command -v "$bin" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "notebook_orch: please install ${missing[*]} with your system's package manager" >&2
  exit 0   # not fatal: the package works without them (DOT source instead of SVG; browser test skipped)
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "notebook_orch: installing Debian packages: ${missing[*]}"
# apt's own output goes to a log ($LOG; the Makefile's is artifacts/system-deps.log), shown when a step fails
quiet=(bash "$(dirname "$0")/quietly.sh" "${LOG:-artifacts/system-deps.log}")
"${quiet[@]}" $SUDO apt-get update -qq
"${quiet[@]}" $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
