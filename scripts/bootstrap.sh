#!/usr/bin/env bash
# Make sure the system tools the stack needs are present; install them from Debian when not.
# Called by `make` before anything else; quiet when everything is already there.
set -euo pipefail

need_apt=()
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# The browser tests drive Debian's Chromium (Playwright's own browser download cannot work here).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)

if ((${#need_apt[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: missing ${need_apt[*]}; install them (apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
  echo "bootstrap: installing ${need_apt[*]} from Debian" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
