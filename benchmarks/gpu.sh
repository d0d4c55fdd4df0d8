#!/usr/bin/env bash
# Every GPU row of docs/benchmarks.md in one go, on one CUDA machine (issue 9).
#
#   bash benchmarks/gpu.sh            # from the repository root, venv with a CUDA torch
#
# 1. train step, plain fp32 eager vs channels-last / bf16 / torch.compile / all three (paper)
# 2. DP step / non-DP step per stage (paper)
# 3. a short `paper` run on a phantom cohort: VQ-VAE, one-pass LDM, slice-wise LDM, segmenter
#    (step time, peak memory and held-out metrics are in each checkpoint's meta.json/curves.csv)
# 4. sampling: one-pass vs slice-wise, DDIM vs DDPM, FID (on the short run's checkpoints)
# 5. quality: FID across depth and EF W1 (on the short run's checkpoints)
# 6. the summary table at the top of docs/benchmarks.md
#
# Each step records its own rows (machine = the GPU's name). A failing step is reported and the
# others still run; the exit status is non-zero if any failed. Sizes can be changed with the
# environment variables below. Logs and the short run go to $WORK (default runs/gpu).
#
# Status: not yet run on a GPU -- no GPU was lent to the session that wrote it. Its plumbing was
# run on a CPU with a tiny config and nothing recorded:
#   CONFIG=tiny ALLOW_CPU=1 NO_RECORD=1 SUBJECTS=8 STEPS_AE=4 STEPS_LDM=4 STEPS_SEG=4 SAMPLES=2 \
#     TRAIN_STEP_ARGS="--variants plain bf16 --steps 2" WORK=/tmp/gpu-dry bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export MPLBACKEND=Agg

WORK=${WORK:-runs/gpu}
CONFIG=${CONFIG:-paper}           # the config of every step
ALLOW_CPU=${ALLOW_CPU:-0}         # 1: run without CUDA (a dry run of this script's plumbing)
NO_RECORD=${NO_RECORD:-0}         # 1: record nothing (benchmarks get --no-record)
SUBJECTS=${SUBJECTS:-16}          # phantom subjects (384 x 384 x 6 x 32) for the short run
STEPS_AE=${STEPS_AE:-300}         # stage-1 steps of the short run
STEPS_LDM=${STEPS_LDM:-300}       # stage-2 steps (each of one-pass and slice-wise)
STEPS_SEG=${STEPS_SEG:-300}       # segmenter steps (the FID feature network)
SAMPLES=${SAMPLES:-8}             # synthetic subjects for sampling and quality
TRAIN_STEP_ARGS=${TRAIN_STEP_ARGS:-}   # e.g. "--set train.autoencoder.batch_size=2"
DP_STEP_ARGS=${DP_STEP_ARGS:-}         # e.g. "--batch 2"

ALLOW_CPU=$ALLOW_CPU python - <<'EOF' || exit 1
import os
import sys
import torch
if not torch.cuda.is_available():
    if os.environ["ALLOW_CPU"] != "1":
        sys.exit(f"gpu.sh: no CUDA device visible to torch {torch.__version__}")
    print(f"gpu.sh: NO CUDA, dry run on the CPU, torch {torch.__version__}")
else:
    print(f"gpu.sh: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
EOF
REC=()
[ "$NO_RECORD" = 1 ] && REC=(--no-record)

mkdir -p "$WORK"
failed=()
step() {  # step NAME COMMAND...: run, log to $WORK/NAME.log, remember failures
  local name=$1
  shift
  echo "== $name: $*"
  local start=$SECONDS
  if "$@" > "$WORK/$name.log" 2>&1; then
    echo "   ok in $((SECONDS - start)) s; last line: $(tail -n 1 "$WORK/$name.log" | cut -c1-300)"
  else
    echo "   FAILED in $((SECONDS - start)) s; see $WORK/$name.log"
    tail -n 5 "$WORK/$name.log"
    failed+=("$name")
  fi
}

# shellcheck disable=SC2086  # the *_ARGS variables are meant to split into words
step train_step python -m benchmarks.train_step --config "$CONFIG" "${REC[@]}" $TRAIN_STEP_ARGS
# shellcheck disable=SC2086
step dp_step python -m benchmarks.dp_step --config "$CONFIG" "${REC[@]}" $DP_STEP_ARGS

P="$WORK/phantom"
step phantom fedcmr4d phantom --config "$CONFIG" --out "$P" --subjects "$SUBJECTS" --seed 0
step autoencoder fedcmr4d train autoencoder --config "$CONFIG" --data "$P" --out "$WORK/autoencoder" \
  --set train.autoencoder.steps="$STEPS_AE" --set train.autoencoder.checkpoint_every=0 \
  --set autoencoder.adversarial_start_step=$((STEPS_AE / 2)) --quiet
step diffusion fedcmr4d train diffusion --config "$CONFIG" --data "$P" \
  --autoencoder "$WORK/autoencoder" --out "$WORK/diffusion" \
  --set train.diffusion.steps="$STEPS_LDM" --set train.diffusion.checkpoint_every=0 \
  --set train.diffusion.warmup_steps=$((STEPS_LDM / 10)) --quiet
step diffusion_slicewise fedcmr4d train diffusion --config "$CONFIG" --data "$P" \
  --autoencoder "$WORK/autoencoder" --out "$WORK/diffusion-slicewise" \
  --set diffusion.stack_slices=1 \
  --set train.diffusion.steps="$STEPS_LDM" --set train.diffusion.checkpoint_every=0 \
  --set train.diffusion.warmup_steps=$((STEPS_LDM / 10)) --quiet
step segmenter fedcmr4d train segmenter --config "$CONFIG" --data "$P" --out "$WORK/segmenter" \
  --set evaluate.segmenter_steps="$STEPS_SEG"

step sampling python -m benchmarks.sampling --checkpoint "$WORK/diffusion" \
  --slicewise-checkpoint "$WORK/diffusion-slicewise" --segmenter "$WORK/segmenter" \
  --subjects "$SAMPLES" --batch 4 "${REC[@]}"
step quality python -m benchmarks.quality --checkpoint "$WORK/diffusion" \
  --segmenter "$WORK/segmenter" --subjects "$SAMPLES" --out "$WORK/quality" \
  "${REC[@]}"
[ "$NO_RECORD" = 1 ] || step summary python -m benchmarks.summary

for name in autoencoder diffusion diffusion_slicewise; do
  dir="$WORK/${name/_/-}"
  [ -f "$dir/meta.json" ] && echo "$name held-out metrics: $(python -c "import json,sys; print(json.load(open(sys.argv[1])).get('holdout_metrics'))" "$dir/meta.json")"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu.sh: failed steps: ${failed[*]}"
  exit 1
fi
echo "gpu.sh: all steps ok (NO_RECORD=$NO_RECORD; rows go to docs/benchmarks.md unless 1)"
