#!/usr/bin/env bash
# Runs every fuzz target (or those named) for RUNS executions each (default
# 1,000,000), starting from the committed seeds, and prints one line per
# target: executions, time, and whether libFuzzer found a crash, a panic or
# a hang (a reproducer then lands in artifacts/TARGET/).
#
#   rustup toolchain install nightly && cargo install cargo-fuzz
#   fuzz/run.sh                       # all targets
#   RUNS=100000 fuzz/run.sh agent     # one target, shorter
set -uo pipefail
cd "$(dirname "$0")"
runs=${RUNS:-1000000}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
mkdir -p logs
status=0
printf '%-14s %12s %9s  %s\n' target executions seconds result
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
    -runs="$runs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    > "logs/$t.log" 2>&1
  code=$?
  done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "logs/$t.log" | tail -n 1)
  execs=$(sed -E 's/^Done ([0-9]+) runs in ([0-9]+).*/\1/' <<<"$done_line")
  secs=$(sed -E 's/^Done ([0-9]+) runs in ([0-9]+).*/\2/' <<<"$done_line")
  if [ $code -eq 0 ] && [ -n "$done_line" ]; then
    result="0 crashes, 0 panics, 0 hangs"
  else
    result="FAILED (exit $code): see fuzz/logs/$t.log and fuzz/artifacts/$t/"
    status=1
  fi
  printf '%-14s %12s %9s  %s\n' "$t" "${execs:--}" "${secs:--}" "$result"
done
exit $status
