"""The trainer: one process trains one cell (`python -m rethink.train --help`).

preprocess.py  batched crops, flip + rotation, per-image standardisation on the device
cell.py        the cell JSON: validation and the hash a checkpoint is tied to
checkpoint.py  atomic checkpoints, resume checks, SIGTERM/SIGUSR1 handling
loop.py        the training loop, evaluation, history.csv / summary.json / train.log
"""
