#!/usr/bin/env bash
# Instructions per round trip of scenario (d), counted by callgrind: unlike
# time on a shared machine, the count repeats within a fraction of a
# percent, so a change of 1 % in the server's work is seen in one run.
#
#   bash bench/instructions.sh                  (Node, js-thread, 10 clients, 10 s)
#   RUNTIME=bun MODE=threads MSG=order bash bench/instructions.sh
#   JITLESS=1 bash bench/instructions.sh        (Node without its JIT: steadier totals)
#   SCENARIO=fanout MODE=threads bash bench/instructions.sh
#     (instructions per delivery instead: CLIENTS (200) in a room, COUNT
#     (300) publications at RATE (50/s) through Redis and the emitter;
#     needs redis-server)
#   SERVER=original RUNTIME=bun MSG=order bash bench/instructions.sh
#     (the original helper, bench/servers/original.mjs, counted the same
#     way; it needs Redis, which is started for it)
#
# The server (bench/servers/native.mjs, without Redis for the closed loop;
# bench/servers/original.mjs with SERVER=original) runs under valgrind; the
# load generator warms it up for 2 s, then the count covers DURATION
# seconds of the closed loop. Prints the round trips, the instructions per
# round trip, and their split by object (Node or Bun, the addon, libc…).
# A build with symbols names the addon's functions in the callgrind file:
#   CARGO_PROFILE_RELEASE_STRIP=none npx napi build --platform --release
# Needs valgrind and a release build of bench/loadgen.
set -euo pipefail
cd "$(dirname "$0")/.."
loadgen=bench/loadgen/target/release/ignis-ws-loadgen
out=${OUT:-/tmp/ignis-ws-callgrind}
mkdir -p "$out"
rm -f "$out"/callgrind.* "$out"/server.out
runtime=${RUNTIME:-node}
[ "$runtime" = bun ] && runtime=node_modules/.bin/bun
flags=()
[ -n "${JITLESS:-}" ] && [ "$runtime" = node ] && flags+=(--jitless)
scenario=${SCENARIO:-echo}
server_name=${SERVER:-native}
server_script=bench/servers/$server_name.mjs
[ -f "$server_script" ] || { echo "no server $server_script" >&2; exit 1; }
if [ "$server_name" = original ] && [ "${RUNTIME:-node}" != bun ]; then
  echo "SERVER=original runs on Bun only: add RUNTIME=bun" >&2
  exit 1
fi
# The other contenders' servers need Redis; ours only for the fan-out.
redis=
{ [ "$scenario" = fanout ] || [ "$server_name" != native ]; } && redis=1
if [ -n "$redis" ]; then
  redis_port=${REDIS_PORT:-6397}
  redis-server --port "$redis_port" --save '' --appendonly no --daemonize yes > /dev/null
  export REDIS_URL=redis://127.0.0.1:$redis_port
  sleep 0.5
fi
IGNIS_WS_RUN_MODE=${MODE:-js-thread} valgrind --tool=callgrind --instr-atstart=no \
  --smc-check=all-non-file --callgrind-out-file="$out/callgrind.%p" \
  "$runtime" "${flags[@]}" "$server_script" > "$out/server.out" 2> "$out/valgrind.log" &
server=$!
stop() {
  kill $server 2>/dev/null || true
  [ -n "$redis" ] && redis-cli -p "$redis_port" shutdown nosave > /dev/null 2>&1 || true
}
trap stop EXIT
for _ in $(seq 240); do grep -q PORT "$out/server.out" 2>/dev/null && break; sleep 0.5; done
port=$(grep -o 'PORT [0-9]*' "$out/server.out" | cut -d' ' -f2)
run() {
  "$loadgen" echo --url "ws://127.0.0.1:$port/ws" --proto ignis --clients "${CLIENTS:-10}" \
    --duration "$1" --message "${MSG:-echo}"
}
# One fan-out: the clients join the room and wait for `$2` publications.
fan_out() {
  "$loadgen" receive --url "ws://127.0.0.1:$port/ws" --proto ignis --clients "${CLIENTS:-200}" \
    --expect "$2" --timeout 300 > "$out/loadgen.json" &
  local receiver=$!
  for _ in $(seq 600); do grep -q READY "$out/loadgen.json" 2> /dev/null && break; sleep 0.2; done
  [ "$1" = on ] && callgrind_control -i on $server > /dev/null 2>&1
  node bench/publish.mjs --kind ignis --redis "$REDIS_URL" --count "$2" --rate "${RATE:-50}" > /dev/null
  wait $receiver
}
if [ "$scenario" = fanout ]; then
  fan_out off 20
  fan_out on "${COUNT:-300}"
else
  run 2 > /dev/null
  callgrind_control -i on $server > /dev/null 2>&1
  run "${DURATION:-10}" > "$out/loadgen.json"
fi
callgrind_control -i off $server > /dev/null 2>&1
callgrind_control -d $server > /dev/null 2>&1
sleep 1
kill $server
wait $server 2>/dev/null || true
if [ "$scenario" = fanout ]; then
  unit=delivery
  trips=$(grep -o '"deliveries":[0-9]*' "$out/loadgen.json" | cut -d: -f2)
else
  unit="round trip"
  trips=$(grep -o '"round_trips":[0-9]*' "$out/loadgen.json" | cut -d: -f2)
fi
file=$(ls -S "$out"/callgrind.* | head -1)
callgrind_annotate --auto=no --threshold=100 --inclusive=no "$file" 2> /dev/null | awk -v rt="$trips" -v unit="$unit" '
  # The object is the last [bracketed] field; a build with symbols also
  # has lines of functions inlined from other files, which name none.
  /^ *[0-9,]+ \(/ {
    v = $1; gsub(",", "", v)
    if ($0 ~ /PROGRAM TOTALS/) { sum["TOTALS"] += v; next }
    obj = "(lines inlined, no object named)"
    if (match($0, /\[[^]]*\] *$/)) obj = substr($0, RSTART, RLENGTH)
    sum[obj] += v
  }
  END {
    printf "%s: %d, instructions per %s %.0f\n", unit, rt, unit, sum["TOTALS"] / rt
    for (o in sum) if (o != "TOTALS" && sum[o] / rt >= 20) printf "  %7.0f  %s\n", sum[o] / rt, o
  }' | { read -r header; echo "$header"; sort -rn; }
echo "callgrind file: $file"
