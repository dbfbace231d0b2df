#!/usr/bin/env bash
# The project's test command: installs what the suite needs when it is
# missing, then runs the whole suite (every crate, every runtime).
#
#   scripts/test.sh [extra cargo test arguments]
#
# Needed beyond Rust: `openssl` (the JWT tests make key pairs with it),
# Node.js with npm, and Debian's Chromium with the `playwright-core`
# package pinned in tests/browser (the demo page test). Each is
# installed only when absent, so a second run goes straight to cargo.
# Chromium comes from Debian's package; nothing downloads a browser.
set -euo pipefail
cd "$(dirname "$0")/.."

# Root installs directly; anyone else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v openssl >/dev/null || missing+=(openssl)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "scripts/test.sh: installing ${missing[*]}" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

# Missing, or older than the lock file (the pinned version changed).
browser=tests/browser
if [ ! -d "$browser/node_modules/playwright-core" ] ||
    [ "$browser/package-lock.json" -nt "$browser/node_modules/.package-lock.json" ]; then
    echo "scripts/test.sh: npm ci in tests/browser" >&2
    (cd "$browser" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi

exec cargo test --workspace "$@"
