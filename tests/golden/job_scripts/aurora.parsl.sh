#!/bin/bash

#PBS -S /bin/bash
#PBS -N aurora-r0001-a0.TIME
#PBS -m n
#PBS -l walltime=01:00:00
#PBS -l select=2:ncpus=12:mpiprocs=12
#PBS -o /run/parsl/aurora-r0001-a0.TIME.stdout
#PBS -e /run/parsl/aurora-r0001-a0.TIME.stderr
#PBS -l filesystems=home:flare
#PBS -l place=scatter

module load frameworks
source /lus/flare/projects/chem/fedhpc/venv/bin/activate

export JOBNAME="aurora-r0001-a0.TIME"

# fedhpc job script (fedhpc.facility.launchers.parsl), run once on the job's first node
date +%s.%N > /run/parsl/aurora-r0001-a0.started
export FEDHPC_DEVICE=xpu
export ZE_FLAT_DEVICE_HIERARCHY=FLAT
export FEDHPC_CACHE=/lus/flare/projects/chem/fedhpc/cache
export OMP_NUM_THREADS=8
export MASTER_ADDR="$(hostname)"
export MASTER_PORT="$(/srv/fedhpc/venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')"
mpiexec -n 24 --ppn 12 --cpu-bind list:1-8:9-16:17-24:25-32:33-40:41-48:53-60:61-68:69-76:77-84:85-92:93-100 /srv/fedhpc/venv/bin/python -m fedhpc worker --task /staging/tasks/r0001-a0/task.json </dev/null
rc=$?
printf '%s\n' "$rc" > /run/parsl/aurora-r0001-a0.rc.tmp && mv -f /run/parsl/aurora-r0001-a0.rc.tmp /run/parsl/aurora-r0001-a0.rc
exit "$rc"


