module load pytorch/2.6.0
source /global/common/software/m1234/fedhpc/venv/bin/activate
export FEDHPC_DEVICE=cuda
export FEDHPC_CACHE=/pscratch/sd/c/chem/fedhpc/cache
export OMP_NUM_THREADS=16
export MASTER_ADDR="$(hostname)"
export MASTER_PORT="$(/global/common/software/m1234/fedhpc/venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')"
timeout -k 30 3600 srun --nodes 2 --ntasks 8 --ntasks-per-node 4 --cpus-per-task 32 --gpus-per-task 1 --cpu-bind=cores --gpu-bind=none --kill-on-bad-exit=1 /global/common/software/m1234/fedhpc/venv/bin/python -m fedhpc worker --task /global/cfs/cdirs/m1234/chem/fedhpc/staging/tasks/r0001-a0/task.json </dev/null
