module load PrgEnv-gnu/8.6.0 rocm/6.2.4 craype-accel-amd-gfx90a
source /lustre/orion/chm123/proj-shared/fedhpc/venv/bin/activate
export FEDHPC_DEVICE=rocm
export NCCL_SOCKET_IFNAME=hsn0
export FEDHPC_CACHE=/lustre/orion/chm123/proj-shared/fedhpc/cache
export OMP_NUM_THREADS=7
export MASTER_ADDR="$(hostname)"
export MASTER_PORT="$(/lustre/orion/chm123/proj-shared/fedhpc/venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')"
timeout -k 30 3600 srun --nodes 2 --ntasks 16 --ntasks-per-node 8 --cpus-per-task 7 --gpus-per-task 1 --gpu-bind=closest --kill-on-bad-exit=1 /lustre/orion/chm123/proj-shared/fedhpc/venv/bin/python -m fedhpc worker --task /lustre/orion/chm123/proj-shared/fedhpc/staging/tasks/r0001-a0/task.json </dev/null
