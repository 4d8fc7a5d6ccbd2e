module use /soft/modulefiles
module load conda
source /lus/eagle/projects/chem/fedhpc/venv/bin/activate
export FEDHPC_DEVICE=cuda
export FEDHPC_CACHE=/lus/eagle/projects/chem/fedhpc/cache
export OMP_NUM_THREADS=8
export MASTER_ADDR="$(hostname)"
export MASTER_PORT="$(/lus/eagle/projects/chem/fedhpc/venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')"
timeout -k 30 3600 mpiexec -n 8 --ppn 4 --cpu-bind list:24-31:16-23:8-15:0-7 /lus/eagle/projects/chem/fedhpc/venv/bin/python -m fedhpc worker --task /lus/eagle/projects/chem/fedhpc/staging/tasks/r0001-a0/task.json </dev/null
