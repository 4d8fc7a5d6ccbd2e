#!/bin/bash

#SBATCH --job-name=perlmutter-r0001-a0.TIME
#SBATCH --output=/run/parsl/perlmutter-r0001-a0.TIME.stdout
#SBATCH --error=/run/parsl/perlmutter-r0001-a0.TIME.stderr
#SBATCH --nodes=2
#SBATCH --time=60
#SBATCH --ntasks-per-node=4

#SBATCH --exclusive
#SBATCH --account=m1234
#SBATCH --qos=regular
#SBATCH --constraint=gpu
#SBATCH --gpus-per-node=4


module load pytorch/2.6.0
source /global/common/software/m1234/fedhpc/venv/bin/activate


export JOBNAME="perlmutter-r0001-a0.TIME"

# fedhpc job script (fedhpc.facility.launchers.parsl), run once on the job's first node
date +%s.%N > /run/parsl/perlmutter-r0001-a0.started
export FEDHPC_DEVICE=cuda
export FEDHPC_CACHE=/pscratch/sd/c/chem/fedhpc/cache
export OMP_NUM_THREADS=16
export MASTER_ADDR="$(hostname)"
export MASTER_PORT="$(/srv/fedhpc/venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')"
srun --nodes 2 --ntasks 8 --ntasks-per-node 4 --cpus-per-task 32 --gpus-per-task 1 --cpu-bind=cores --gpu-bind=none --kill-on-bad-exit=1 /srv/fedhpc/venv/bin/python -m fedhpc worker --task /staging/tasks/r0001-a0/task.json </dev/null
rc=$?
printf '%s\n' "$rc" > /run/parsl/perlmutter-r0001-a0.rc.tmp && mv -f /run/parsl/perlmutter-r0001-a0.rc.tmp /run/parsl/perlmutter-r0001-a0.rc
exit "$rc"

