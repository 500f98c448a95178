#!/usr/bin/env bash
# Runs every example against cachectl-mock on a free local port.
set -euo pipefail
cd "$(dirname "$0")/.."
export LUA_PATH_5_4="$PWD/lua/?.lua;$PWD/lua/?/init.lua;;"
export LUA_CPATH_5_4="$PWD/build/5.4/?.so;;"
export NO_PROXY=127.0.0.1,localhost
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy

out=$(mktemp)
lua5.4 bin/cachectl-mock --port 0 >"$out" &
mock=$!
trap 'kill "$mock" 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 100); do [ -s "$out" ] && break; sleep 0.05; done
url=$(head -n1 "$out")
echo "cachectl-mock listening on $url"

export MODELSLAB_BASE_URL="$url/api" MODELSLAB_API_KEY="demo-modelslab-key"
export OMNI_BASE_URL="$url/api" OMNI_API_KEY="demo-omni-token"
lua5.4 examples/clear_cache.lua
lua5.4 examples/clear_queue.lua
lua5.4 examples/clear_queue.lua video
lua5.4 examples/reset_cache.lua 1b4e28ba-2fa1-11d2-883f-0016d3cca427 daily hourly "weekly reports"
lua5.4 examples/policies.lua Sales
lua5.4 examples/policies.lua 3f2504e0-4f89-41d3-9a0c-0305e82c3301 "weekly report"
status=0
lua5.4 examples/policies.lua Sales dialy || status=$?
[ "$status" -eq 2 ] || { echo "the misspelled policy 'dialy' was not refused (exit $status)" >&2; exit 1; }
