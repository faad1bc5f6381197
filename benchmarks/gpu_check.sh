#!/usr/bin/env bash
# One check of the code on a GPU, meant to take under 8 minutes on one H100 or H200; writes a Markdown
# summary (default: gpu_check.md). Needs the dev requirements (the reference implementations).
#   1. tests/test_cuda.py: our networks against the reference in bfloat16 and float16 on the GPU;
#   2. benchmarks/bench_attack.py at the official size in bfloat16, default and --low-memory: seconds
#      per iteration, peak memory, ratio to the diffusers-based iteration, achieved TFLOP/s;
#   3. attack.py on examples/astronaut.png at 576x1024, 14 frames, 50 iterations, on random
#      official-size weights: wall time, peak memory, and the whole run's peak (with the video check) against
#      the estimate attack.py made before loading, which chose its memory mode;
#   4. sample.py, 25 steps, on the same weights: wall time;
#   5. benchmarks/dit_iteration.py: one attack iteration against CogVideoX-5B-I2V at 480x720x49 in
#      bfloat16 on random official-size weights, with and without --low-memory: seconds and peak memory;
#   6. the same against Wan2.2-TI2V-5B at 480x832x49.
# --dry-run does every step on the CPU at small sizes, so that the script is tested without a GPU.
#
#   benchmarks/gpu_check.sh [--dry-run] [SUMMARY.md]        (PYTHON=... picks the interpreter)
set -uo pipefail

dry_run=false
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=true; shift; fi
summary=$(realpath -m "${1:-gpu_check.md}")
python=${PYTHON:-python}
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if $dry_run; then
  device=cpu; tests=(-k bf16); size=mid
  bench=(--size mid --device cpu --dtype float32 --modes default --rounds 1 --iters 1)
  video=(--height 64 --width 64 --frames 4 --sample-steps 2); iterations=2
  dit=(--size tiny --device cpu --dtype float32 --iters 1)
else
  device=cuda; tests=(); size=official
  bench=(--size official --device cuda --dtype bfloat16 --modes default,memory --rounds 1 --iters 3)
  video=(--height 576 --width 1024 --frames 14 --sample-steps 25); iterations=50
  dit=(--size official --device cuda --dtype bfloat16 --iters 2)
fi
failed=0

# step TITLE COMMAND...: run it, append its title, time, exit status and output to the summary.
step() {
  local title=$1; shift
  local start=$SECONDS status=0
  echo "== $title" >&2
  "$@" >"$work/output" 2>&1 || status=$?
  {
    echo "## $title"
    echo
    echo "\`$*\`: exit $status, $((SECONDS - start)) s"
    echo
    echo '```'
    grep -v $'\r' "$work/output" | tail -n 40
    echo '```'
    echo
  } >>"$summary"
  if ((status != 0)); then failed=1; fi
}

{
  echo "# GPU check$($dry_run && echo ' (dry run on the CPU: no GPU figures)')"
  echo
  "$python" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() \
if torch.cuda.is_available() else 'no CUDA device')"
  date -u +"%Y-%m-%d %H:%M UTC"
  echo
} >"$summary"

GPU_CHECK_DEVICE=$device step "1. Networks against the reference in low precision" \
  "$python" -m pytest -q -s tests/test_cuda.py "${tests[@]}"
step "2. One attack iteration and one sampling step, against the diffusers-based implementation" \
  "$python" benchmarks/bench_attack.py "${bench[@]}"
step "Random weights at the $size size for steps 3 and 4" "$python" -c "import sys; from pathlib import Path; \
sys.path.insert(0, 'benchmarks'); from bench_attack import write_weights; write_weights('$size', Path('$work/svd'))"
model=(--model "$work/svd" --variant none --device "$device")
step "3. Protecting examples/astronaut.png, $iterations iterations" "$python" attack.py \
  --image examples/astronaut.png --out "$work/astronaut.guarded.png" --steps "$iterations" "${video[@]}" "${model[@]}"
grep -a "^memory: " "$work/output" >"$work/memory" || echo "memory: no estimate (on a CPU)" >"$work/memory"
"$python" -c "import json, re, sys; r = json.load(open(sys.argv[1])); line = open(sys.argv[2]).read().strip(); \
estimate = re.search(r'estimated at ([0-9.]+) GiB', line); whole = r['peak_memory_with_videos_bytes'] / 2**30; \
print(f\"Protection: {r['wall_time_s']:.1f} s, peak memory {r['peak_memory_bytes'] / 2**30:.2f} GiB, with the video \
check {whole:.2f} GiB, low memory {r['settings']['low_memory']}; {line}\" + (f\"; measured / estimated \
{whole / float(estimate[1]):.3f}\" if estimate else '') + '\n')" \
  "$work/astronaut.guarded.json" "$work/memory" >>"$summary" 2>/dev/null || failed=1
step "4. A video from examples/astronaut.png" "$python" sample.py --image examples/astronaut.png \
  --out "$work/astronaut.gif" "${video[@]}" "${model[@]}"
step "5. One attack iteration against CogVideoX-5B-I2V (random weights)" \
  "$python" benchmarks/dit_iteration.py --model cogvideox "${dit[@]}"
step "6. One attack iteration against Wan2.2-TI2V-5B (random weights)" \
  "$python" benchmarks/dit_iteration.py --model wan "${dit[@]}"

echo "Summary: $summary" >&2
exit $failed
