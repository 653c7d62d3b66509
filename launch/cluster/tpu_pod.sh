#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice (v4-32, v5e-64, ...): one copy of launch/train.py per host, started over
# `gcloud compute tpus tpu-vm ssh --worker=all`; `--distributed` lets JAX find the other hosts by itself.
#
# usage: launch/cluster/tpu_pod.sh --tpu=NAME --zone=ZONE --config=CONFIG --workdir=SHARED_DIR
#            [--project=PROJECT] [--repo-dir=DIR] [--python=python3] [--setup --repo-url=URL] [--dry-run]
#            [-- --config.FIELD=VALUE ...]
#
#   --repo-dir   the checkout on every worker, relative to the home directory (default: probabilistic-sr)
#   --setup      first, on every worker: git clone --repo-url into --repo-dir (or pull) and pip install -e '.[tpu]'
#   --dry-run    print each command (shell-quoted, one per line) and run nothing
#   after --     passed through to launch/train.py, e.g. config overrides
#
# example:
#   launch/cluster/tpu_pod.sh --tpu=sr-v4-32 --zone=us-central2-b --setup --repo-url=https://github.com/ME/psr.git \
#       --config=configs/celeba_pixelcnn.py --workdir=/gcs/my-bucket/runs/celeba -- --config.batch_size=256
#
# The workdir must be a directory every host sees (all hosts write one checkpoint): a GCS bucket mounted at the same
# path on every worker with gcsfuse (as above), or a Filestore/NFS share; launch/train.py takes paths, not gs://
# URLs. Training stops when the ssh session ends, so run this from tmux/screen. Preemption (spot/preemptible TPU):
# a preempted TPU goes to PREEMPTED and must be deleted and created again (`gcloud compute tpus tpu-vm
# delete/create`); then rerun the same command with --setup: the run resumes from the latest checkpoint in the
# workdir. Rerunning also continues an interrupted run.
set -euo pipefail

usage_line() { sed -n '/^# usage:/,/^#$/{/^#$/d;s/^# //p;}' "${BASH_SOURCE[0]}"; }
die() { echo "error: $*" >&2; usage_line >&2; exit 2; }
quote() {  # Shell-quote each argument (POSIX single quotes; plain words stay bare) and join them with spaces.
  local a sq="'" esc="'\\''" out=()
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=("$a"); else out+=("'${a//$sq/$esc}'"); fi
  done
  printf '%s\n' "${out[*]}"
}

tpu='' zone='' project='' config='' workdir='' repo_dir=probabilistic-sr repo_url='' python=python3 setup=0 dry=0
overrides=()
while (($#)); do
  case $1 in
    --tpu=*) tpu=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --repo-dir=*) repo_dir=${1#*=} ;;
    --repo-url=*) repo_url=${1#*=} ;;
    --python=*) python=${1#*=} ;;
    --setup) setup=1 ;;
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p;}' "${BASH_SOURCE[0]}"; exit 0 ;;
    --) shift; overrides=("$@"); break ;;
    *) die "unknown argument '$1' (options take the form --name=value)" ;;
  esac
  shift
done
missing=()
for opt in tpu zone config workdir; do [[ -n ${!opt} ]] || missing+=("--$opt"); done
((${#missing[@]} == 0)) || die "missing required option(s): ${missing[*]}"
for a in ${overrides[@]+"${overrides[@]}"}; do [[ $a != --dry-run ]] || die "--dry-run goes before --"; done
[[ $workdir != *://* ]] || die "--workdir takes a path that every worker sees (e.g. a bucket mounted with gcsfuse at \
/gcs/BUCKET), not a URL: $workdir"
((setup == 0)) || [[ -n $repo_url ]] || die "--setup needs --repo-url=URL (the git repository to clone on the workers)"

run() { if ((dry)); then quote "$@"; else echo "+ $(quote "$@")" >&2; "$@"; fi; }
ssh_all() {  # Run one shell command line on every worker of the slice.
  run gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" ${project:+--project="$project"} --worker=all \
    --command="$1"
}

if ((setup)); then
  d=$(quote "$repo_dir")
  ssh_all "if test -d $d/.git; then git -C $d pull -q --ff-only; else git clone -q $(quote "$repo_url") $d; fi \
&& cd $d && $(quote "$python") -m pip install -q -e '.[tpu]'"
fi
ssh_all "cd $(quote "$repo_dir") && $(quote "$python" launch/train.py --config="$config" --workdir="$workdir" \
  --distributed ${overrides[@]+"${overrides[@]}"})"
