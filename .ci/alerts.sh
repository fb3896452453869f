#!/usr/bin/env bash
# deploy/prometheus/backupd.rules.yml is valid and its unit tests pass
# (promtool test rules: each alert fires where it should and not elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== alert rules (promtool)"
# Debian ships promtool only in the prometheus package (19 MB, ~10 s). Its
# postinst asks to start the daemon; in this container policy-rc.d denies it
# and systemd is not PID 1, so nothing is left running (and even without
# that, the init script backgrounds it with output to its log: no hang).
command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
promtool --version 2>&1 | head -1
promtool check rules deploy/prometheus/backupd.rules.yml
promtool test rules deploy/prometheus/backupd.rules.test.yml
