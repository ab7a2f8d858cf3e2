#!/bin/sh
# install-deps.sh - the one list of Debian packages capmoe needs, used by the
# Makefile (`make run`, `make test`) and by docker/Dockerfile.
#   install-deps.sh build     compiler + -dev libraries
#   install-deps.sh runtime   shared libraries only (the slim image)
#   install-deps.sh test      build + test tools (Check, promtool, node, wrk, openssl
#                             for test certificates, chromium for the CORS test,
#                             systemd for systemd-analyze verify of the unit,
#                             python3-jinja2 for the chat-template parity,
#                             clang for the Check suites under clang's sanitizers)
#   install-deps.sh --list M  print the package list of mode M and exit
# Installs only what is missing; needs root (or sudo) when something is.
set -eu

BUILD_PKGS="gcc make pkg-config libc6-dev libopenblas-dev libcjson-dev libmicrohttpd-dev libuv1-dev libpcre2-dev libutf8proc-dev libopenmpi-dev openmpi-bin libgnutls28-dev libdnnl-dev"
RUNTIME_PKGS="libopenblas0-pthread libcjson1 libmicrohttpd12 libuv1 libpcre2-8-0 libutf8proc2 libopenmpi3 openmpi-bin libgnutls30 libdnnl2 libgomp1 tini"
TEST_PKGS="check clang prometheus wrk nodejs npm python3 python3-jinja2 curl docker-compose iproute2 openssl chromium systemd"

list=0
if [ "${1:-}" = "--list" ]; then list=1; shift; fi
mode="${1:-build}"
case "$mode" in
  build)   pkgs="$BUILD_PKGS" ;;
  runtime) pkgs="$RUNTIME_PKGS" ;;
  test)    pkgs="$BUILD_PKGS $TEST_PKGS" ;;
  *) echo "install-deps.sh: unknown mode '$mode' (build, runtime, test)" >&2; exit 2 ;;
esac
if [ "$list" = 1 ]; then echo $pkgs; exit 0; fi

missing=""
for p in $pkgs; do
  # node/npm may come from elsewhere than Debian (e.g. a preinstalled Node).
  case "$p" in
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    npm)    command -v npm >/dev/null 2>&1 && continue ;;
  esac
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
[ -z "$missing" ] && exit 0

echo "install-deps.sh: installing:$missing" >&2
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
