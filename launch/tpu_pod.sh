#!/usr/bin/env bash
# One magjax job on a Cloud TPU VM slice: create (or reuse) the slice, install magjax on
# every worker, start `magjax train` on all of them at once and stream their logs. On TPU,
# jax.distributed finds the slice's topology and coordinator itself (MAGJAX_DISTRIBUTED=auto).
#
#   launch/tpu_pod.sh --name magistral --zone us-east5-a --type v5p-64 [--project P] \
#       [--version v2-alpha-tpuv5] [--spot] [--dry-run] \
#       -- --gin_file experiments/magistral_small.gin --gin_file mesh/tpu_v5p_64.gin --run_dir /mnt/shared/runs/x
#
# Everything after `--` goes to `magjax train`. The run directory must be storage every
# worker sees at the same path (a Filestore/NFS mount, or a bucket through gcsfuse):
# checkpoints are written by all workers together. --dry-run prints every command.
set -euo pipefail

name="" zone="" type="" project="" version="" spot=0 dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --type) type="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --dry-run|--dry_run) dry_run=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "tpu_pod.sh: unknown option $1 (magjax's own arguments go after --)" >&2; exit 2 ;;
  esac
done
for required in name zone type; do
  [[ -n "${!required}" ]] || { echo "tpu_pod.sh: --$required is required" >&2; exit 2; }
done
if [[ -z "$version" ]]; then  # the runtime image for the TPU generation
  case "$type" in
    v5p-*) version=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) version=v2-alpha-tpuv5-lite ;;
    v6e-*) version=v2-alpha-tpuv6e ;;
    *) version=tpu-ubuntu2204-base ;;
  esac
fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
gcloud=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
[[ -z "$project" ]] || where+=(--project="$project")

run() {
  if [[ $dry_run == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

# 1. The slice: reuse it when it exists.
if [[ $dry_run == 1 ]] || ! "${gcloud[@]}" describe "$name" "${where[@]}" > /dev/null 2>&1; then
  create=("${gcloud[@]}" create "$name" "${where[@]}" --accelerator-type="$type" --version="$version")
  [[ $spot == 0 ]] || create+=(--spot)
  [[ $dry_run == 0 ]] || echo "# if \`${gcloud[*]} describe $name\` finds no slice:"
  run "${create[@]}"
fi

# 2. The package, on every worker: this checkout's source, then an install with TPU jax.
tarball="/tmp/magjax-src.tar.gz"
run tar -czf "$tarball" -C "$repo" --exclude=.git --exclude=.venv --exclude=runs --exclude=logs .
run "${gcloud[@]}" scp "$tarball" "$name:magjax-src.tar.gz" "${where[@]}" --worker=all
run "${gcloud[@]}" ssh "$name" "${where[@]}" --worker=all --command \
  "mkdir -p ~/magjax && tar -xzf ~/magjax-src.tar.gz -C ~/magjax && pip install -q 'jax[tpu]' -e ~/magjax"

# 3. The job, on all workers at once; their output streams back here, prefixed by worker.
train_args="$(printf '%q ' "$@")"
run "${gcloud[@]}" ssh "$name" "${where[@]}" --worker=all --command \
  "cd ~/magjax && MAGJAX_DISTRIBUTED=auto python3 -m magjax.cli train $train_args 2>&1 | tee -a ~/magjax-train.log"
