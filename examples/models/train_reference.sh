#!/usr/bin/env bash
# The reference models, as trained for examples/models/: gla-10m (dropout 0.2 and 0.3) and
# hybrid-10m (dropout 0.2), all three at once on one GPU, each ending itself within $BUDGET
# seconds; then QAT vs PTQ (int4) on the better gla-10m run. Run from the repository root:
#
#   TEXT=../shared/data/tinyshakespeare.txt OUT=out/reference bash examples/models/train_reference.sh
#
# On the GPU machine (edgelin from PYTHONPATH, text carried in .data/, results under $PACK_TO):
#   D=$OUT; PYTHONPATH=. OUT=/tmp/ref TEXT=.data/tinyshakespeare.txt PACK_TO=$D bash examples/models/train_reference.sh
# then here: cat models.tar.part-* | tar -x -C examples/models
#
# Recipe: nanoGPT's shakespeare_char (AdamW lr 1e-3 -> 1e-4 cosine, warmup 100, wd 0.1, betas 0.9/0.99,
# clip 1.0, batch 64 x 256 bytes), byte-level, bf16 autocast, 4000 steps, best held-out checkpoint kept.
set -u
TEXT=${TEXT:-../shared/data/tinyshakespeare.txt}
OUT=${OUT:-out/reference}
BUDGET=${BUDGET:-420}
STEPS=${STEPS:-4000}
EXTRA=${EXTRA:-}
QAT_EXTRA=${QAT_EXTRA:-}
mkdir -p "$OUT"
edgelin_() {  # the installed command, or edgelin from PYTHONPATH (the GPU machine has its own torch)
  if command -v edgelin > /dev/null; then edgelin "$@"
  else python3 -c 'import sys; from edgelin.cli import main; sys.argv[0] = "edgelin"; main()' "$@"; fi
}
run() {  # config, run name, dropout
  edgelin_ train --text "$TEXT" --config "$1" -o "$OUT/$2" --steps "$STEPS" --dropout "$3" --eval-every 200 \
    --save-dtype bfloat16 --time-budget "$BUDGET" --force $EXTRA > "$OUT/$2.txt" 2>&1
  echo "$2 exit $?: $(tail -n 1 "$OUT/$2.txt")"
}
for d in ${GLA_DROPOUTS:-0.2 0.3}; do run gla-10m "gla-10m-d$d" "$d" & done
run hybrid-10m hybrid-10m-d0.2 0.2 &
wait
best=$(python3 - "$OUT" <<'PY'
import json, sys, pathlib
runs = {p.parent.name: json.loads(p.read_text())["best_val"] for p in pathlib.Path(sys.argv[1]).glob("gla-10m-d*/train_log.json")}
print(min(runs, key=runs.get))
PY
)
echo "better gla-10m run: $best"
echo "$best" > "$OUT/best_gla.txt"
if [ -n "${PACK_TO:-}" ]; then
  # Ship layout (examples/models/NAME), tarred and split: a bf16 10.8M model is 21.6 MB and the
  # GPU machine returns files of at most 16 MB.
  S=$(mktemp -d)
  for pair in "gla-10m:$best" "hybrid-10m:hybrid-10m-d0.2"; do
    name=${pair%%:*}; run=${pair#*:}; mkdir -p "$S/$name"
    cp "$OUT/$run"/{config.json,model.safetensors,train_log.json,loss.png,command.txt} "$S/$name/"
  done
  tar -C "$S" -cf "$S/models.tar" gla-10m hybrid-10m && (cd "$PACK_TO" && split -b 15M "$S/models.tar" models.tar.part-)
  (cd "$OUT" && tar --exclude=last --exclude=model.safetensors -czf "$PACK_TO/runs-logs.tgz" *)
fi
[ "${QAT:-1}" = 0 ] && exit 0
python3 benchmarks/qat_vs_ptq.py --model "$OUT/$best" --text "$TEXT" --steps "${QAT_STEPS:-500}" \
  --time-budget "${QAT_BUDGET:-40}" $QAT_EXTRA --json "$OUT/qat_vs_ptq.json" > "$OUT/qat_vs_ptq.txt" 2>&1
tail -n 8 "$OUT/qat_vs_ptq.txt"
