# Source me: Debian's Chromium for the browser tests (preferences page, report), installed
# if missing; exports RECOCAMP_TEST_CHROMIUM. Tests that need it skip where it is absent.
if ! command -v chromium >/dev/null 2>&1; then
    echo "ci: installing Chromium from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
fi
export RECOCAMP_TEST_CHROMIUM="$(command -v chromium)"
echo "ci: $("$RECOCAMP_TEST_CHROMIUM" --version 2>/dev/null | head -n 1)"
