#!/usr/bin/env bash
# Instructions the gateway process executes per request (callgrind's Ir), counted after a
# warm-up, in front of the shared kit's mock backend. On a busy machine CPU time per request
# moves by tens of percent between identical runs; the instruction count moves by about 1 %,
# so compare two trees with it and confirm with bench/gateway_overhead.sh.
#   bash bench/gateway_instructions.sh [nonstream|stream] [REQUESTS]
#   SRC=/path/to/other/tree bash bench/gateway_instructions.sh stream 150
# Needs valgrind (apt-get install valgrind) and the kit set up (see gateway_overhead.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-nonstream}; n=${2:-300}
src=${SRC:-$root}
PEER=${PEER:-${TMPDIR:-/tmp}/cortex-bench}
py=$PEER/venv/bin/python
gw_py=${GW_PY:-$root/.venv/bin/python}
port=${CORTEX_BENCH_PORT:-18353}; mock_port=${MOCK_PORT:-18002}
command -v valgrind > /dev/null || { echo "needs valgrind" >&2; exit 2; }
[ -x "$py" ] || { echo "needs the bench kit at $PEER (run bench/gateway_overhead.sh once)" >&2; exit 2; }
work=$(mktemp -d)
cat > "$work/cortex.toml" <<TOML
[gateway]
listen = "127.0.0.1:$port"
metrics_listen = "127.0.0.1:$((port + 1))"
models = "models.toml"
[[upstreams]]
name = "mock"
endpoint = "http://127.0.0.1:$mock_port/v1"
TOML
echo 'models = []' > "$work/models.toml"
MOCK_PORT=$mock_port MOCK_TOKENS=64 "$py" "$PEER/mock_backend.py" > "$work/mock.log" 2>&1 &
mock=$!
(cd "$work" && PYTHONPATH=$src exec valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$work/cg.out" "$gw_py" -m cortex --log-level warning --role gateway \
  --config "$work/cortex.toml" > "$work/gateway.log" 2>&1) &
gw=$!
trap 'kill $gw $mock 2>/dev/null; wait $gw $mock 2>/dev/null' EXIT
for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$port/v1/models" && break; sleep 0.5; done
stream=(); [ "$mode" = stream ] && stream=(--stream)
url=http://127.0.0.1:$port/v1/chat/completions
"$py" "$PEER/load.py" --url "$url" "${stream[@]}" -n 100 -c 8 -d 60 --timeout 60 > /dev/null
callgrind_control -i on "$gw" > /dev/null 2>&1
"$py" "$PEER/load.py" --url "$url" "${stream[@]}" -n "$n" -c 8 -d 300 --timeout 60 > /dev/null
callgrind_control -i off "$gw" > /dev/null 2>&1
callgrind_control -d "$gw" > /dev/null 2>&1
ir=$(grep -h "^totals:" "$work"/cg.out* | awk '{print $2}' | sort -n | tail -1)
echo "$mode: $((ir / n)) instructions per request ($n requests, $src)"
