#!/usr/bin/env bash
# Gateway overhead, side by side with nginx and LiteLLM, using the shared bench kit
# (../shared/bench). cortex routes model mock-gpt to the kit's mock backend as an [[upstreams]].
#   bash bench/gateway_overhead.sh                    # full run (~11 min on 2 cores)
#   N=300 DUR=5 ROUNDS=1 bash bench/gateway_overhead.sh  # smoke
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kit=${KIT:-$root/../shared/bench}
if [ ! -f "$kit/setup.sh" ]; then
  echo "gateway_overhead.sh needs the shared bench kit (mock backend, nginx and LiteLLM set-up);" >&2
  echo "none at $kit: set KIT=/path/to/bench" >&2
  exit 2
fi
PEER=${PEER:-${TMPDIR:-/tmp}/cortex-bench}
[ -x "$PEER/venv/bin/python" ] || PEER=$PEER bash "$kit/setup.sh"
work=$(mktemp -d)
port=${CORTEX_BENCH_PORT:-18313}
cat > "$work/cortex.toml" <<TOML
[gateway]
listen = "127.0.0.1:$port"
metrics_listen = "127.0.0.1:$((port + 1))"
models = "models.toml"
[[upstreams]]
name = "mock"
endpoint = "http://127.0.0.1:${MOCK_PORT:-18000}/v1"
TOML
echo 'models = []' > "$work/models.toml"
export PEER GW_NAME=cortex GW_BASE="http://127.0.0.1:$port" GW_ANTHROPIC=1
export GW_CMD="$root/.venv/bin/cortex --log-level warning --role gateway --config $work/cortex.toml"
exec bash "$PEER/bench.sh"
