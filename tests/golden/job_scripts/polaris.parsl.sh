#!/bin/bash

#PBS -S /bin/bash
#PBS -N polaris-r0001-a0.TIME
#PBS -m n
#PBS -l walltime=01:00:00
#PBS -l select=2:ncpus=4:mpiprocs=4
#PBS -o /run/parsl/polaris-r0001-a0.TIME.stdout
#PBS -e /run/parsl/polaris-r0001-a0.TIME.stderr
#PBS -l filesystems=home:eagle
#PBS -l place=scatter

module use /soft/modulefiles
module load conda
source /lus/eagle/projects/chem/fedhpc/venv/bin/activate

export JOBNAME="polaris-r0001-a0.TIME"

# fedhpc job script (fedhpc.facility.launchers.parsl), run once on the job's first node
date +%s.%N > /run/parsl/polaris-r0001-a0.started
export FEDHPC_DEVICE=cuda
export FEDHPC_CACHE=/lus/eagle/projects/chem/fedhpc/cache
export OMP_NUM_THREADS=8
export MASTER_ADDR="$(hostname)"
export MASTER_PORT="$(/srv/fedhpc/venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')"
mpiexec -n 8 --ppn 4 --cpu-bind list:24-31:16-23:8-15:0-7 /srv/fedhpc/venv/bin/python -m fedhpc worker --task /staging/tasks/r0001-a0/task.json </dev/null
rc=$?
printf '%s\n' "$rc" > /run/parsl/polaris-r0001-a0.rc.tmp && mv -f /run/parsl/polaris-r0001-a0.rc.tmp /run/parsl/polaris-r0001-a0.rc
exit "$rc"


