#!/usr/bin/env bash
# Launch dispo_jax training on a Cloud TPU pod slice: create (or reuse) the TPU VM, copy the code,
# install it, run the same command on every worker (--worker=all) and stream the logs.
#
#   TPU_NAME=dispo-v5p ZONE=us-east5-a ACCELERATOR=v5p-64 RUNTIME=v2-alpha-tpuv5 \
#   WORKDIR=gs://my-bucket/runs/sudoku_dispo CHECKPOINT=/mnt/llada/LLaDA-8B-Instruct \
#     bash launch/tpu_pod.sh --config=configs/sudoku.py --config.method=dispo
#
# jax.distributed.initialize() auto-detects the pod inside dispo_jax.train; the work folder should be a
# GCS path (orbax writes checkpoints there from every host). The LLaDA weights must be readable at
# $CHECKPOINT on every worker (a mounted bucket or a copied folder).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}" "${CHECKPOINT:?set CHECKPOINT}"
ACCELERATOR="${ACCELERATOR:-v5p-64}"
RUNTIME="${RUNTIME:-v2-alpha-tpuv5}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
REMOTE_DIR="dispo_jax"

if ! gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG >/dev/null 2>&1; then
  echo "creating $TPU_NAME ($ACCELERATOR, $RUNTIME) in $ZONE"
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG \
    --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
else
  echo "reusing $TPU_NAME"
fi

tarball="$(mktemp -d)/dispo_jax.tar.gz"
git -C "$REPO_DIR" archive --format=tar.gz -o "$tarball" HEAD
gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME":~/dispo_jax.tar.gz --zone="$ZONE" \
  --worker=all $PROJECT_FLAG

setup="rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -xzf ~/dispo_jax.tar.gz -C ~/$REMOTE_DIR \
  && cd ~/$REMOTE_DIR && python3 -m venv .venv && . .venv/bin/activate \
  && pip install -q -e '.[tpu,gcs]'"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all $PROJECT_FLAG --command="$setup"

quoted_args=$(printf ' %q' "$@")
# Every value that reaches the remote shell is quoted (paths with spaces or shell characters).
# pipefail: the pipe through tee must report the training's exit status, not tee's.
run="set -o pipefail && cd ~/$REMOTE_DIR && . .venv/bin/activate && python -m dispo_jax.train \
  $(printf '%q' "--workdir=$WORKDIR") $(printf '%q' "--config.model.checkpoint=$CHECKPOINT")\
$quoted_args 2>&1 | tee -a ~/train.log"
# Every worker runs the same program; the ssh session streams all workers' logs.
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all $PROJECT_FLAG --command="$run"
