#!/usr/bin/env bash
# The reference models, as trained for edgelin/models/trained/: runs of gla-10m and
# hybrid-10m, all runs at once on one GPU, each ending itself within $BUDGET seconds; the best
# held-out run of each config is shipped; then QAT vs PTQ (int4) on the shipped gla-10m.
# Run from the repository root:
#
#   TEXT=../shared/data/tinyshakespeare.txt OUT=out/reference bash examples/models/train_reference.sh
#
# On the GPU machine (edgelin from PYTHONPATH, text carried in .data/, results under $PACK_TO):
#   D=$OUT; PYTHONPATH=. OUT=/tmp/ref TEXT=.data/tinyshakespeare.txt PACK_TO=$D MPS=1 bash examples/models/train_reference.sh
# then here: cat models.tar.part-* | tar -x -C edgelin/models/trained
#
# Recipe: nanoGPT's shakespeare_char (AdamW lr 1e-3 -> 1e-4 cosine, warmup 100, wd 0.1, betas 0.9/0.99,
# clip 1.0, batch 64 x 256 bytes), byte-level, bf16 autocast, best held-out checkpoint kept. These
# models overfit the 1 MB text far sooner than nanoGPT's transformer (a 4000-step run peaked at
# step 400-600), so the schedule is short, the dropout high and the weights averaged (--ema; the GLA
# sweep behind edgelin/models/trained/gla-10m is in docs/BENCHMARKS.md). RUNS lists config:dropout:steps[:options],
# config a zoo name or a config.json, options comma-separated train flags (e.g. --weight-decay=0.5).
# MPS=1 starts NVIDIA's multi-process service first, so the runs share the GPU concurrently instead of
# in time slices (session 4: six runs of 1200-1500 steps in 230-340 s, about 1.2x the total steps/s
# of session 3's eight runs without it).
set -u
TEXT=${TEXT:-../shared/data/tinyshakespeare.txt}
OUT=${OUT:-out/reference}
BUDGET=${BUDGET:-420}
RUNS=${RUNS:-gla-10m:0.4:1500:--weight-decay=0.5,--ema=0.99 hybrid-10m:0.5:2000}
EVAL_EVERY=${EVAL_EVERY:-50}
EXTRA=${EXTRA:-}
QAT_EXTRA=${QAT_EXTRA:-}
mkdir -p "$OUT"
if [ "${MPS:-0}" = 1 ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
  mkdir -p /tmp/mps /tmp/mpslog && nvidia-cuda-mps-control -d && trap 'echo quit | nvidia-cuda-mps-control' EXIT
fi
edgelin_() {  # the installed command, or edgelin from PYTHONPATH (the GPU machine has its own torch)
  if command -v edgelin > /dev/null; then edgelin "$@"
  else python3 -c 'import sys; from edgelin.cli import main; sys.argv[0] = "edgelin"; main()' "$@"; fi
}
run() {  # config, dropout, steps, options
  opts=${4//,/ }
  name="$(basename "$1" .json)-d$2-s$3$(echo "$opts" | sed 's/--weight-decay=/-wd/g; s/--/-/g; s/[= ]//g')"
  edgelin_ train --text "$TEXT" --config "$1" -o "$OUT/$name" --steps "$3" --dropout "$2" --eval-every "$EVAL_EVERY" \
    --save-dtype bfloat16 --time-budget "$BUDGET" --force $opts $EXTRA > "$OUT/$name.txt" 2>&1
  echo "$name exit $?: $(tail -n 1 "$OUT/$name.txt")"
}
for r in $RUNS; do IFS=: read -r c d s o <<< "$r"; run "$c" "$d" "$s" "$o" & done
wait
best() {  # the run whose name starts with $1 with the lowest held-out loss
  python3 - "$OUT" "$1" <<'PY'
import json, sys, pathlib
runs = {p.parent.name: json.loads(p.read_text())["best_val"] for p in pathlib.Path(sys.argv[1]).glob(f"{sys.argv[2]}*/train_log.json")}
print(min(runs, key=runs.get) if runs else "")
PY
}
best_gla=$(best gla-10m); best_hybrid=$(best hybrid-10m)
echo "shipping gla-10m <- $best_gla, hybrid-10m <- $best_hybrid"
if [ -n "${PACK_TO:-}" ]; then
  # Ship layout (edgelin/models/trained/NAME), tarred and split: a bf16 10.8M model is 21.6 MB and the
  # GPU machine returns files of at most 16 MB. A config without runs keeps its shipped model.
  S=$(mktemp -d); shipped=""
  for pair in "gla-10m:$best_gla" "hybrid-10m:$best_hybrid"; do
    name=${pair%%:*}; run=${pair#*:}; [ -z "$run" ] && continue
    mkdir -p "$S/$name"; shipped="$shipped $name"
    cp "$OUT/$run"/{config.json,model.safetensors,train_log.json,loss.png,command.txt} "$S/$name/"
  done
  tar -C "$S" -cf "$S/models.tar" $shipped && (cd "$PACK_TO" && split -b 15M "$S/models.tar" models.tar.part-)
  (cd "$OUT" && tar --exclude=last --exclude=model.safetensors -czf "$PACK_TO/runs-logs.tgz" *)
fi
[ "${QAT:-1}" = 0 ] && exit 0
python3 benchmarks/qat_vs_ptq.py --model "$OUT/$best_gla" --text "$TEXT" --steps "${QAT_STEPS:-400}" \
  --time-budget "${QAT_BUDGET:-0}" $QAT_EXTRA --json "$OUT/qat_vs_ptq.json" > "$OUT/qat_vs_ptq.txt" 2>&1
tail -n 8 "$OUT/qat_vs_ptq.txt"
