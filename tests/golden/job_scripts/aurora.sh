module load frameworks
source /lus/flare/projects/chem/fedhpc/venv/bin/activate
export FEDHPC_DEVICE=xpu
export ZE_FLAT_DEVICE_HIERARCHY=FLAT
export FEDHPC_CACHE=/lus/flare/projects/chem/fedhpc/cache
export OMP_NUM_THREADS=8
export MASTER_ADDR="$(hostname)"
export MASTER_PORT="$(/lus/flare/projects/chem/fedhpc/venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')"
timeout -k 30 3600 mpiexec -n 24 --ppn 12 --cpu-bind list:1-8:9-16:17-24:25-32:33-40:41-48:53-60:61-68:69-76:77-84:85-92:93-100 /lus/flare/projects/chem/fedhpc/venv/bin/python -m fedhpc worker --task /lus/flare/projects/chem/fedhpc/staging/tasks/r0001-a0/task.json </dev/null
