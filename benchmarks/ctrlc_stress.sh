#!/usr/bin/env bash
# The Ctrl-C tests 10 times in a row while two busy loops keep both cores busy (issue 29).
# Usage: bash benchmarks/ctrlc_stress.sh <checkout>
cd "$1"
source .venv/bin/activate
export PYTHONPATH=$PWD/src
python -c "while True: pass" & B1=$!
python -c "while True: pass" & B2=$!
pass=0; fail=0
for i in $(seq 1 10); do
  if timeout 900 python -m pytest -q -n0 tests/test_ray.py -k ctrl_c > /tmp/ctrlc_$i.log 2>&1; then pass=$((pass+1)); else fail=$((fail+1)); fi
  echo "run $i: $(tail -1 /tmp/ctrlc_$i.log)"
done
kill $B1 $B2
echo "passed runs: $pass, failed runs: $fail"
