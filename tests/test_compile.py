"""The compiled step's logic on CPU (tests/test_gpu.py runs it with CUDA graphs): dropout draws from
the cell's own generator stay outside the compiled graphs, and a pack of several cells is not
compiled. tests/test_pack.py checks that a compiled cell trains like the eager one."""

import pytest
import torch

from rethink.errors import RethinkError
from rethink.train import loop

from test_train import make_cell, write_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_compiled_step_draws_dropout_eagerly_from_the_cells_generator():
    """No compiled graph holds a random draw (a CUDA graph would replay the same mask), and the
    compiled step consumes the dropout generator exactly as the eager step does."""
    graphs = []

    def keep_graph(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    cell, cpu = make_cell("mlp_1x512", width=0.25, dropout=0.5), torch.device("cpu")
    x, y = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 10
    runs = {}
    for name, step in (("eager", loop.sgd_step), ("compiled", torch.compile(loop.sgd_step, backend=keep_graph))):
        model, opt, _, dropout_gen, amp, fmt = loop.setup(cell, (1, 8, 8), 10, cpu)
        losses = torch.stack([step(model, opt, x, y, amp, fmt)[0] for _ in range(3)])
        runs[name] = losses, dropout_gen.get_state()
    assert graphs, "nothing was compiled"
    for gm in graphs:
        for node in gm.graph.nodes:
            assert "generator" not in node.kwargs and "rand" not in str(node.target), node.format_node()
    assert torch.equal(runs["eager"][1], runs["compiled"][1])  # the same draws, in the same order
    assert torch.allclose(runs["eager"][0], runs["compiled"][0], rtol=1e-5)


def test_a_pack_of_several_cells_is_not_compiled(tmp_path):
    data = (
        [write_split(tmp_path / "train.h5", 32, (1, 8, 8), "train", 1)],
        [write_split(tmp_path / "test.h5", 16, (1, 8, 8), "test", 2)],
    )
    jobs = [loop.Job(make_cell(seed=s, crop_size=8), *data, tmp_path / str(s), tmp_path / f"{s}.pt") for s in range(2)]
    with pytest.raises(RethinkError, match="compile mode 'default' trains a pack of one cell, but this pack has 2"):
        loop.train(jobs, echo=False, compile_mode="default")
    assert not any((tmp_path / str(s)).exists() for s in range(2))  # refused before any work
