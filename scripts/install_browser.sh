#!/usr/bin/env bash
# Installs Debian's `chromium` for the web UI's browser test (tests/test_ui_browser.py) when it is
# missing and apt is usable. Never downloads a browser build of its own (no `playwright install`).
# It does not fail `make test` by itself: when no browser can be had it says so, and the browser
# test then fails with the same advice.
set -u
BROWSER="${MSD_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$BROWSER" ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        SUDO="none"
    fi
fi
if command -v apt-get >/dev/null 2>&1 && [ "$SUDO" != none ]; then
    echo "install_browser: installing Debian's chromium with apt-get (for the UI browser test)"
    if $SUDO apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium >/dev/null; then
        [ -x "$BROWSER" ] && exit 0
    fi
fi
echo "install_browser: warning: no Chromium at $BROWSER and apt-get could not install it;" \
     "the UI browser test will fail. Install Debian's 'chromium' package" \
     "(apt-get install chromium) or point MSD_CHROMIUM at a Chromium binary." >&2
exit 0
