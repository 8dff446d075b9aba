#!/usr/bin/env bash
# N magjax processes on this machine running one job together: jax.distributed with the
# coordinator on 127.0.0.1 and CPU collectives (gloo), each process with its own CPU devices.
#
#   launch/local.sh [--processes N] [--devices_per_process D] [--port P] [--log_dir DIR] [--dry-run] \
#       -- train --gin_file experiments/demo_cpu.gin --run_dir runs/local
#
# Everything after `--` is passed to `magjax` (or to $MAGJAX, e.g. MAGJAX="python -m magjax.cli").
# Process 0's output streams to the terminal; every process logs to LOG_DIR/process_I.log.
# Ctrl-C (or SIGTERM) is forwarded to every process, which checkpoints and exits cleanly.
set -euo pipefail

processes=2
devices=4
port=""
log_dir=""
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --processes) processes="$2"; shift 2 ;;
    --devices_per_process) devices="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --log_dir) log_dir="$2"; shift 2 ;;
    --dry-run|--dry_run) dry_run=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "local.sh: unknown option $1 (magjax's own arguments go after --)" >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || set -- train
if [[ -z "$port" ]]; then  # a free port, chosen by the kernel
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
log_dir="${log_dir:-logs/local-$(date +%Y%m%d-%H%M%S)}"
read -r -a magjax <<< "${MAGJAX:-magjax}"

pids=()
forward() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; }
trap forward INT TERM

[[ $dry_run == 1 ]] || mkdir -p "$log_dir"
for ((i = 0; i < processes; i++)); do
  env_vars=(MAGJAX_COORDINATOR="127.0.0.1:$port" MAGJAX_NUM_PROCESSES="$processes" MAGJAX_PROCESS_ID="$i"
            # The caller's XLA flags are kept; the device count is appended, so it is the one that holds.
            JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$devices")
  if [[ $dry_run == 1 ]]; then
    printf '%q ' env "${env_vars[@]}" "${magjax[@]}" "$@"
    printf '> %q 2>&1\n' "$log_dir/process_$i.log"
    continue
  fi
  : > "$log_dir/process_$i.log"  # exists before `tail` below opens it, however late the process starts
  env "${env_vars[@]}" "${magjax[@]}" "$@" >> "$log_dir/process_$i.log" 2>&1 &
  pids+=($!)
done
[[ $dry_run == 1 ]] && exit 0

tail -n +1 -f "$log_dir/process_0.log" --pid "${pids[0]}" &
tailer=$!
status=0
for i in "${!pids[@]}"; do
  code=0
  wait "${pids[$i]}" || code=$?
  # A forwarded signal interrupts `wait` itself (code > 128, process still running): wait on.
  while (( code > 128 )) && kill -0 "${pids[$i]}" 2>/dev/null; do code=0; wait "${pids[$i]}" || code=$?; done
  if [[ $code != 0 ]]; then
    echo "local.sh: process $i exited with $code; see $log_dir/process_$i.log" >&2
    status=$code
    forward  # the others would wait forever on collectives with a missing peer: stop them
  fi
done
wait "$tailer" 2>/dev/null || true
exit $status
