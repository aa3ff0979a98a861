"""A cell's training and test splits, checked against the cell and each other: in memory on the
device (the small datasets), shared by pack-mates that read the same shards, or streamed from
JPEG shards (ImageNet: `rethink.train.stream`)."""

from rethink.data.imagenet import SHARD_FORMAT
from rethink.data.shards import read_shard, read_split_tensors
from rethink.errors import RethinkError
from rethink.train import cell as cells
from rethink.train import stream


def check_split(arrays, attrs, paths, split, cell):
    """A split on the device (InMemorySplit), once its shards are known to be the cell's and fit
    its crop."""
    cells.check_shards(cell, split, attrs, paths[0])
    crop_size = cell["hparams"]["crop_size"]
    shape = tuple(arrays["images"].shape[1:])
    if len(shape) != 3 or min(shape[1:]) < crop_size:
        raise RethinkError(f"{paths[0]}: images of shape {shape} are smaller than hparams.crop_size={crop_size}")
    if not len(arrays["labels"]):
        raise RethinkError(f"{paths[0]}: the {split} split is empty")
    # The dataset's class count, not the largest label seen: a small subset may miss a class.
    num_classes = int(attrs["num_classes"])
    if arrays["labels"].max() >= num_classes:
        raise RethinkError(f"{paths[0]}: labels exceed the {num_classes} classes the shards declare")
    return stream.InMemorySplit(arrays["images"], arrays["labels"], num_classes)


class SplitCache:
    """Pack-mates that read the same shards share one copy on the device (checked for each); a
    streamed split (JPEG shards) is never loaded: each member gets a reader of its own."""

    def __init__(self, device):
        self.device, self._loaded = device, {}

    def get(self, paths, split, cell):
        _, attrs = read_shard(paths[0], ["labels"])
        if attrs.get("format") == SHARD_FORMAT:
            cells.check_shards(cell, split, attrs, paths[0])
            return stream.StreamedSplit(paths, attrs, cell["stream"]["window_shards"], self.device)
        key = tuple(map(str, paths))
        if key not in self._loaded:
            arrays, attrs = read_split_tensors(paths, ("images", "labels"))
            self._loaded[key] = {name: a.to(self.device) for name, a in arrays.items()}, attrs
        return check_split(*self._loaded[key], paths, split, cell)

    def splits(self, job):
        """(training split, test split) of a job (loop.Job), from one dataset."""
        train = self.get(job.train_paths, "train", job.cell)
        test = self.get(job.test_paths, "test", job.cell)
        if test.num_classes != train.num_classes:
            raise RethinkError(
                f"{job.test_paths[0]}: {test.num_classes} classes, but the training shards "
                f"declare {train.num_classes}; the train and test shards come from different datasets"
            )
        if type(train) is stream.InMemorySplit and train.image_shape != test.image_shape:
            raise RethinkError(
                f"train images are {train.image_shape} but test images are "
                f"{test.image_shape}; the train and test shards come from different datasets"
            )
        return train, test
