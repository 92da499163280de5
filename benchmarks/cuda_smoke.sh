#!/usr/bin/env bash
# Smoke-test and time `bayesbench run --device cuda` on a GPU machine whose python has torch.
# Usage: OUT=/tmp/out bash benchmarks/cuda_smoke.sh
set -uo pipefail
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 COLUMNS=160
OUT=${OUT:-/tmp/bayesbench-cuda}
mkdir -p "$OUT"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
t0=$(date +%s.%N)
python3 -m bayesbench run --config benchmarks/cuda_smoke.yaml --quick --device cuda \
  --store "$OUT/cuda.sqlite" --out "$OUT/report_cuda"; echo "cuda quick rc=$?"
t1=$(date +%s.%N)
python3 -m bayesbench run --config benchmarks/cuda_smoke.yaml --quick --device cpu \
  --store "$OUT/cpu.sqlite" --out "$OUT/report_cpu"; echo "cpu quick rc=$?"
t2=$(date +%s.%N)
python3 -c "import sys; a, b, c = map(float, sys.argv[1:]); print(f\"quick grid wall: cuda {b - a:.1f} s, cpu (1 thread) {c - b:.1f} s\")" "$t0" "$t1" "$t2"
# full budget, map only, digits: the per-epoch cost on each device
for dev in cuda cpu; do
  python3 -m bayesbench run --config benchmarks/cuda_smoke.yaml --datasets digits --methods map,mfvi \
    --device $dev --store "$OUT/full_$dev.sqlite" > "$OUT/full_$dev.txt" 2>&1; echo "full $dev rc=$?"
  tail -8 "$OUT/full_$dev.txt"
done
python3 - "$OUT" <<'PY'
import sys, sqlite3
out = sys.argv[1]
for name in ["cuda", "cpu"]:
    con = sqlite3.connect(f"{out}/{name}.sqlite")
    rows = con.execute("select r.label, r.dataset, r.status, r.device, m.value from runs r "
                       "left join metrics m on m.key = r.key and m.split='test' "
                       "and m.metric='accuracy' order by r.dataset, r.label").fetchall()
    for r in rows: print(name, *r)
PY
