"""A run's infrastructure, under the training loop and the commands: checkpoints (checkpoint.py),
files written under a temporary name and renamed (atomic.py), graceful stops on signals
(interrupt.py), the compute device (device.py) and data parallelism over MPI ranks (distributed.py).
"""
