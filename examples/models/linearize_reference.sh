#!/usr/bin/env bash
# The linearization reference run (docs/BENCHMARKS.md, "Linearization"): a ~10M byte-level
# Llama-style transformer trained on the first 90% of tinyshakespeare with the shipped models' recipe
# (examples/models/train_reference.sh), then `edgelin linearize`d into GLA and into GLA + a 64-token
# sliding window on at most 10% of the teacher's training tokens; beside it (MLSTM=1), the ~10M
# mLSTM trained with the same recipe.
# Run from the repository root on one GPU:
#
#   TEXT=../shared/data/tinyshakespeare.txt OUT=out/linearize bash examples/models/linearize_reference.sh
#
# On the GPU machine (edgelin from PYTHONPATH, text carried in .data/, models and logs under $PACK_TO):
#   PYTHONPATH=. OUT=/tmp/lin TEXT=.data/tinyshakespeare.txt PACK_TO=$D MPS=1 bash examples/models/linearize_reference.sh
# then here: cat models.tar.part-* | tar -x -C DEST
set -u
TEXT=${TEXT:-../shared/data/tinyshakespeare.txt}
OUT=${OUT:-out/linearize}
TEACHER_STEPS=${TEACHER_STEPS:-1500}
TEACHER_BUDGET=${TEACHER_BUDGET:-330}
TEACHER_ARGS=${TEACHER_ARGS:---dropout 0.4 --weight-decay 0.5 --ema 0.99}
MLSTM_STEPS=${MLSTM_STEPS:-1500}
MLSTM_BUDGET=${MLSTM_BUDGET:-420}
TRANSFER_STEPS=${TRANSFER_STEPS:-100}
LIN_BUDGET=${LIN_BUDGET:-200}
LINS=${LINS:-gla:hedgehog:1e-3 gla:identity:1e-3 gla+swa:hedgehog:1e-3 gla+swa:hedgehog:3e-4}
FRACTION=${FRACTION:-10}  # percent of the teacher's training tokens the linearization may use
mkdir -p "$OUT"
if [ "${MPS:-0}" = 1 ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
  mkdir -p /tmp/mps /tmp/mpslog && nvidia-cuda-mps-control -d && trap 'echo quit | nvidia-cuda-mps-control' EXIT
fi
edgelin_() {
  if command -v edgelin > /dev/null; then edgelin "$@"
  else python3 -c 'import sys; from edgelin.cli import main; sys.argv[0] = "edgelin"; main()' "$@"; fi
}
# AdamW lr 1e-3 cosine to 1e-4, warmup 100, batch 64 x 256, bf16 autocast (nanoGPT's), with gla-10m's regularisation
edgelin_ train --text "$TEXT" --config examples/models/configs/llama-10m.json -o "$OUT/teacher" --steps "$TEACHER_STEPS" \
  $TEACHER_ARGS --eval-every 50 --save-dtype bfloat16 --time-budget "$TEACHER_BUDGET" --force > "$OUT/teacher.txt" 2>&1 &
teacher=$!
mlstm=0
[ "${MLSTM:-1}" = 1 ] && { edgelin_ train --text "$TEXT" --config examples/models/configs/mlstm-10m.json -o "$OUT/mlstm-10m" --steps "$MLSTM_STEPS" \
  --dropout 0.4 --weight-decay 0.5 --ema 0.99 --eval-every 50 --save-dtype bfloat16 \
  --time-budget "$MLSTM_BUDGET" --force > "$OUT/mlstm-10m.txt" 2>&1 & mlstm=$!; }
wait $teacher; echo "teacher exit $?: $(tail -n 1 "$OUT/teacher.txt")"
# the token budget: FRACTION% of what the teacher trained on, attention transfer (32 x 256 a step) included
steps=$(python3 -c "
import json; log = json.load(open('$OUT/teacher/train_log.json'))
budget = log['steps_done'] * 64 * 256 * $FRACTION // 100
print(max(1, (budget - $TRANSFER_STEPS * 32 * 256) // (64 * 256)))")
echo "linearization fine-tuning steps: $steps (batch 64 x 256)"
# LINS lists into:feature-map:lr; each variant runs at once, and the best held-out run of each --into ships
for spec in $LINS; do
  IFS=: read -r into fm lr <<< "$spec"; name=lin-${into/+/-}-$fm-lr$lr
  edgelin_ linearize "$OUT/teacher" --into "$into" --window 64 --feature-map "$fm" --lr "$lr" --text "$TEXT" -o "$OUT/$name" \
    --transfer-steps "$TRANSFER_STEPS" --steps "$steps" --eval-every 25 --save-dtype bfloat16 \
    --time-budget "$LIN_BUDGET" --force > "$OUT/$name.txt" 2>&1 &
done
wait $(jobs -p | grep -v "^$mlstm$"); for f in "$OUT"/lin-*.txt; do echo "$(basename "$f" .txt): $(tail -n 1 "$f")"; done
[ "$mlstm" != 0 ] && { wait $mlstm; echo "mlstm-10m exit $?: $(tail -n 1 "$OUT/mlstm-10m.txt")"; }
best() {  # the variant of into $1 (lin-gla or lin-gla-swa) with the lowest held-out loss
  python3 - "$OUT" "$1" <<'PY'
import json, sys, pathlib
runs = {p.parent.name: json.loads(p.read_text())["best_val"] for p in pathlib.Path(sys.argv[1]).glob(f"{sys.argv[2]}-*/train_log.json")
        if p.parent.name[len(sys.argv[2]) + 1:].split("-")[0] in ("hedgehog", "identity")}
print(min(runs, key=runs.get) if runs else "")
PY
}
best_gla=$(best lin-gla); best_swa=$(best lin-gla-swa)
echo "shipping linearized-gla <- $best_gla, linearized-gla-swa <- $best_swa"
if [ -n "${PACK_TO:-}" ]; then
  S=$(mktemp -d)
  for pair in "linearized-gla:$best_gla" "linearized-gla-swa:$best_swa" "mlstm-10m:mlstm-10m"; do
    name=${pair%%:*}; run=${pair#*:}
    [ -f "$OUT/$run/model.safetensors" ] || continue
    mkdir -p "$S/$name" && cp "$OUT/$run"/{config.json,model.safetensors,train_log.json,loss.png,command.txt} "$S/$name/"
    cp "$OUT/$run"/{linearize.json,transfer_log.json} "$S/$name/" 2>/dev/null
  done
  tar -C "$S" -cf "$S/models.tar" $(ls "$S") && (cd "$PACK_TO" && split -b 15M "$S/models.tar" models.tar.part-)
  (cd "$OUT" && tar --exclude=last --exclude=transfer --exclude=model.safetensors -czf "$PACK_TO/runs-logs.tgz" *)
fi
