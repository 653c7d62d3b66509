#!/usr/bin/env bash
# Multi-node GPU training under SLURM: writes an sbatch script that starts one launch/train.py per node with srun
# (--ntasks-per-node=1, each process drives all GPUs of its node) with `--distributed`, and submits it.
#
# usage: launch/cluster/slurm_gpu.sh --nodes=N --gpus-per-node=G --config=CONFIG --workdir=DIR
#            [--venv=PATH] [--repo=DIR] [--time=24:00:00] [--cpus-per-task=8] [--job-name=psr] [--grace=120]
#            [--output=slurm-%x-%j.out] [--partition=P] [--account=A] [--dry-run] [-- --config.FIELD=VALUE ...]
#
#   --venv       virtual environment the nodes activate (default: the python the job inherits from this shell)
#   --repo       this checkout as the nodes see it (default: the one holding this script)
#   --grace      seconds before the time limit at which training is told to checkpoint and stop
#   --dry-run    print the sbatch script, then the sbatch command as a comment; submit nothing
#   after --     passed through to launch/train.py, e.g. config overrides
#
# example:
#   launch/cluster/slurm_gpu.sh --nodes=2 --gpus-per-node=8 --venv=/shared/envs/psr --time=48:00:00 \
#       --config=configs/celeba_pixelcnn.py --workdir=/shared/runs/celeba -- --config.batch_size=256
#
# The workdir must be on a filesystem all nodes share. Restarts: Slurm requeues a preempted job (--requeue), and
# shortly before its time limit the job checkpoints and requeues itself; every start resumes from the latest
# checkpoint in the workdir. Submitting the same command again also continues a stopped run.
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

nodes='' gpus='' config='' workdir='' venv='' time=24:00:00 cpus=8 job_name=psr grace=120
output='slurm-%x-%j.out' partition='' account='' dry=0
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
overrides=()
while (($#)); do
  case $1 in
    --nodes=*) nodes=${1#*=} ;;
    --gpus-per-node=*) gpus=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --venv=*) venv=${1#*=} ;;
    --repo=*) repo=${1#*=} ;;
    --time=*) time=${1#*=} ;;
    --cpus-per-task=*) cpus=${1#*=} ;;
    --job-name=*) job_name=${1#*=} ;;
    --grace=*) grace=${1#*=} ;;
    --output=*) output=${1#*=} ;;
    --partition=*) partition=${1#*=} ;;
    --account=*) account=${1#*=} ;;
    --dry-run) dry=1 ;;
    -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p;}' "${BASH_SOURCE[0]}"; exit 0 ;;
    --) shift; overrides=("$@"); break ;;
    *) die "unknown argument '$1' (options take the form --name=value)" ;;
  esac
  shift
done
missing=()
for opt in nodes gpus config workdir; do [[ -n ${!opt} ]] || missing+=("--${opt/gpus/gpus-per-node}"); done
((${#missing[@]} == 0)) || die "missing required option(s): ${missing[*]}"
for a in ${overrides[@]+"${overrides[@]}"}; do [[ $a != --dry-run ]] || die "--dry-run goes before --"; done
for n in nodes gpus cpus grace; do [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "--$n must be a positive integer"; done
[[ $workdir == /* ]] || workdir=$PWD/$workdir  # The job runs in --repo; paths given here are relative to here.
[[ -z $venv || $venv == /* ]] || venv=$PWD/$venv

script() {
  local line
  echo '#!/bin/bash'
  for line in "job-name=$job_name" "nodes=$nodes" ntasks-per-node=1 "gpus-per-node=$gpus" "cpus-per-task=$cpus" \
      "time=$time" "output=$output" open-mode=append requeue "signal=B:USR1@$grace" \
      ${partition:+"partition=$partition"} ${account:+"account=$account"}; do
    echo "#SBATCH --$line"
  done
  cat <<BODY
# Written by launch/cluster/slurm_gpu.sh.
cd $(quote "$repo")
${venv:+source $(quote "$venv/bin/activate")
}set -euo pipefail
# JAX's Slurm auto-detection reads SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID
# (set by srun, one task per process) and would then give each process only GPU \$SLURM_LOCALID, not all of its node's.
export JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((gpus - 1)))
export SRUN_CPUS_PER_TASK=\$SLURM_CPUS_PER_TASK PYTHONUNBUFFERED=1  # srun 22.05+ may not inherit --cpus-per-task.
# $grace s before the time limit Slurm sends USR1 to this batch shell only (B:). Signalling srun would not do: srun
# turns SIGTERM into SIGKILL for its tasks. So the trap has Slurm send SIGTERM straight to the training processes
# (scancel without --batch/--full skips this shell); they save a checkpoint and exit 0, then the job requeues itself.
# A preemption is requeued by Slurm (--requeue); it SIGTERMs every process, srun too, so unless the cluster sets
# PreemptParameters=send_user_signal (USR1 first) the run may resume from its previous checkpoint.
requeue=0
trap 'requeue=1; scancel --signal=TERM "\$SLURM_JOB_ID"' USR1
srun --kill-on-bad-exit=1 $(quote python launch/train.py --config="$config" --workdir="$workdir" --distributed \
  ${overrides[@]+"${overrides[@]}"}) &
pid=\$!
status=0; wait "\$pid" || status=\$?
if ((requeue)); then
  if ((status > 128)); then status=0; wait "\$pid" || status=\$?; fi  # The trap cut the first wait short.
  scontrol requeue "\$SLURM_JOB_ID"
fi
exit "\$status"
BODY
}

if ((dry)); then
  script
  echo "# dry run, nothing submitted; the script above would go to the standard input of: $(quote sbatch)"
else
  echo "+ sbatch  (script on stdin; add --dry-run to see it)" >&2
  script | sbatch
fi
