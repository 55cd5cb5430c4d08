#!/usr/bin/env bash
# Instructions the server executes per echo round trip, counted by callgrind: repeatable whatever
# else the machine does (timings on a shared machine are not). Starts `asap serve` from DIST
# (default dist) under callgrind, warms it up with 3,000 requests (64 in flight, one connection,
# as bench row 2), zeroes the counters, runs 2,000 more and prints instructions per round trip.
# Usage: bench/instructions.sh [DIST] [extra asap serve flags…]   (needs valgrind; about a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
dist="${1:-dist}"
shift || true
out="$(mktemp -d)"
port="$(node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")"
valgrind --tool=callgrind --callgrind-out-file="$out/cg.out" \
  node "$dist/cli/main.js" serve --port "$port" --rate-limit 0 --log-level silent "$@" >"$out/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do grep -q listening "$out/server.log" && break; sleep 0.2; done
node bench/fixed-load.mjs "ws://127.0.0.1:$port/asap/ws" 3000 >/dev/null
callgrind_control -z "$pid" >/dev/null
node bench/fixed-load.mjs "ws://127.0.0.1:$port/asap/ws" 2000 >/dev/null
callgrind_control -d "$pid" >/dev/null
sleep 1
kill -TERM "$pid"
wait "$pid" || true
total="$(grep -h '^summary:' "$out"/cg.out.1 | awk '{print $2}')"
echo "$((total / 2000)) instructions per round trip ($dist $*, $total for 2,000)"
rm -rf "$out"
