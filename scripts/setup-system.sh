#!/usr/bin/env bash
# The Debian packages the test suite drives for real: Chromium for the web page's browser tests,
# nginx (the file-serving benchmark's baseline and the load balancer of multi-replica tests),
# PostgreSQL 15 (the shared registry). Installs what is missing when it can (root with apt-get);
# otherwise says what is missing. The tests themselves fail, never skip, on a missing one in CI.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages: ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
else
    echo "missing Debian packages (install them as root): ${need[*]}" >&2
fi
