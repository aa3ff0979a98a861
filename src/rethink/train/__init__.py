"""The trainer: one process trains a pack of cells, or several processes one cell together
(`python -m rethink.train --help`).

__main__.py     the CLI: a cell (cell.json and its shards) or a pack (--pack JSON, what the workflow runs)
cell.py         the cell JSON: validation (the config schema's `cell`), summary.json's fields, the
                hash a checkpoint is tied to
loop.py         the training loop of a pack: a member's epochs, steps, evaluation, stop
data.py         a cell's splits, checked against it; pack-mates reading the same shards share them
outputs.py      a cell's files: history.csv (a row per epoch as it trains), summary.json, train.log
preprocess.py   batched crops, flip + rotation, per-image standardisation on the device
stream.py       the splits: in memory, or streamed from JPEG shards (ImageNet) by a prefetch thread
distributed.py  the world the trainer runs in: one process, or several (torchrun) training one cell
checkpoint.py   what a checkpoint holds, atomic saves, resume checks, signal handling
"""
