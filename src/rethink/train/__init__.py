"""The trainer: one process trains a pack of cells, or several processes one cell together
(`python -m rethink.train --help`).

__main__.py     the CLI: a cell (cell.json and its shards) or a pack (--pack JSON, what the workflow runs)
cell.py         the cell JSON: validation (the config schema's `cell`), summary.json's fields, the
                hash a checkpoint is tied to
loop.py         the training loop of a pack, evaluation, history.csv / summary.json / train.log
preprocess.py   batched crops, flip + rotation, per-image standardisation on the device
stream.py       the splits: in memory, or streamed from JPEG shards (ImageNet) by a prefetch thread
distributed.py  several processes (torchrun) training one cell: batch parts, all-reduces, agreement
checkpoint.py   atomic checkpoints, resume checks, signal handling
"""
