#!/usr/bin/env bash
# guidellm's streaming benchmark against `forgellm serve` (the demo model, float32, on the CPU),
# bounded in time: chat completions (guidellm's default) and then text completions, SECONDS_EACH each.
# guidellm sends stream_options {include_usage, continuous_usage_stats} on every request (vLLM's
# extension); before forgellm took continuous_usage_stats, every one of its requests failed with a 400.
#
#   python3.11 -m venv /work/gvenv && /work/gvenv/bin/pip install guidellm   # once (it brings torch)
#   benchmarks/guidellm_smoke.sh      # 2 x 25 s measured, ~100 s wall with guidellm's start-up
#   GUIDELLM=guidellm SECONDS_EACH=60 STREAMS=8 benchmarks/guidellm_smoke.sh
#
# Prints guidellm's tables and one summary line per request format; exits 1 if any request
# errored or none completed. guidellm's JSON reports stay in $OUT_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
GUIDELLM="${GUIDELLM:-/work/gvenv/bin/guidellm}"
SECONDS_EACH="${SECONDS_EACH:-25}"
STREAMS="${STREAMS:-4}"            # concurrent streams
PROMPT_TOKENS="${PROMPT_TOKENS:-64}"
OUTPUT_TOKENS="${OUTPUT_TOKENS:-32}"
PORT="${PORT:-8765}"
OUT_DIR="${OUT_DIR:-$(mktemp -d /tmp/guidellm_smoke.XXXXXX)}"
PYTHON="${PYTHON:-python}"
MODEL_NAME=forgellm-demo
TARGET="http://127.0.0.1:${PORT}"

command -v "$GUIDELLM" >/dev/null || { echo "guidellm not found at $GUIDELLM (set GUIDELLM)" >&2; exit 2; }
mkdir -p "$OUT_DIR"

# One intra-op thread: on a small shared CPU, two threads wait on each other and steps get slower.
cd "$ROOT"
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$PYTHON" -m forgellm serve --dtype float32 --port "$PORT" \
    >"$OUT_DIR/serve.log" 2>&1 &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true' EXIT

for _ in $(seq 120); do
    curl -sf "$TARGET/health" >/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "forgellm serve exited:" >&2; cat "$OUT_DIR/serve.log" >&2; exit 1; }
    sleep 0.5
done
curl -sf "$TARGET/health" >/dev/null || { echo "forgellm serve did not become healthy" >&2; exit 1; }

status=0
for format in /v1/chat/completions /v1/completions; do
    name="$(basename "$format")"
    # The demo's own tokenizer builds the synthetic prompts (no download); HF_HUB_OFFLINE keeps it so.
    HF_HUB_OFFLINE=1 timeout $((SECONDS_EACH + 120)) "$GUIDELLM" run \
        --backend "kind=openai_http,target=$TARGET,model=$MODEL_NAME,request_format=$format" \
        --profile "kind=concurrent,streams=$STREAMS" \
        --data "kind=synthetic_text,prompt_tokens=$PROMPT_TOKENS,output_tokens=$OUTPUT_TOKENS" \
        --tokenizer "kind=huggingface_auto,model=$ROOT/forgellm/assets/demo" \
        --constraint "kind=max_duration,seconds=$SECONDS_EACH" \
        --output "kind=json,path=$OUT_DIR/$name.json" \
        --disable-progress
    "$PYTHON" - "$OUT_DIR/$name.json" "$format" <<'EOF' || status=1
import json
import sys

path, fmt = sys.argv[1], sys.argv[2]
metrics = json.load(open(path))["benchmarks"][0]["metrics"]
totals = metrics["request_totals"]


def median(name: str) -> float:
    return metrics[name]["successful"]["median"]


print(
    f"guidellm {fmt}: {totals['successful']} completed, {totals['errored']} errored, "
    f"{totals['incomplete']} cut by the time limit; TTFT median {median('time_to_first_token_ms'):.0f} ms, "
    f"ITL median {median('inter_token_latency_ms'):.1f} ms, "
    f"output {metrics['output_tokens_per_second']['successful']['mean']:.1f} tok/s, "
    f"{metrics['requests_per_second']['successful']['mean']:.2f} req/s"
)
sys.exit(1 if totals["errored"] or not totals["successful"] else 0)
EOF
done
echo "reports: $OUT_DIR"
exit "$status"
