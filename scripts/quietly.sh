#!/usr/bin/env bash
# Run one install step with its output appended to a log file, so `make demo` stays a few lines long;
# when the step fails, say which one and print the end of the log (the whole log stays in the file).
#   usage: bash scripts/quietly.sh LOG COMMAND [ARG ...]
set -uo pipefail
log=$1
shift
mkdir -p "$(dirname "$log")"
echo "+ $*" >>"$log"
"$@" >>"$log" 2>&1
status=$?
if [ "$status" -ne 0 ]; then
  echo "error: this install step failed (exit $status): $*" >&2
  echo "---- the last 40 lines of $log ----" >&2
  tail -n 40 "$log" >&2
  echo "---- the whole log: $log ----" >&2
fi
exit "$status"
