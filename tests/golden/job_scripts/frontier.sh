module load PrgEnv-gnu/8.7.0 cpe/26.03 rocm/7.1.1 rccl-net-plugin craype-accel-amd-gfx90a
export LD_LIBRARY_PATH=$CRAY_LD_LIBRARY_PATH:$LD_LIBRARY_PATH
source /lustre/orion/chm123/proj-shared/fedhpc/venv/bin/activate
mkdir -p /tmp/fedhpc-miopen
export FEDHPC_DEVICE=rocm
export NCCL_SOCKET_IFNAME=hsn0,hsn1,hsn2,hsn3
export MIOPEN_USER_DB_PATH=/tmp/fedhpc-miopen
export MIOPEN_CUSTOM_CACHE_DIR=/tmp/fedhpc-miopen
export FEDHPC_CACHE=/lustre/orion/chm123/proj-shared/fedhpc/cache
export OMP_NUM_THREADS=7
export MASTER_ADDR="$(hostname)"
export MASTER_PORT="$(/lustre/orion/chm123/proj-shared/fedhpc/venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')"
timeout -k 30 3600 srun --nodes 2 --ntasks 16 --ntasks-per-node 8 --cpus-per-task 7 --gpus-per-task 1 --gpu-bind=closest --kill-on-bad-exit=1 /lustre/orion/chm123/proj-shared/fedhpc/venv/bin/python -m fedhpc worker --task /lustre/orion/chm123/proj-shared/fedhpc/staging/tasks/r0001-a0/task.json </dev/null
