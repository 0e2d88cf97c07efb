"""The tensor-parallel flags: parsed into the load config, and bad combinations refused
with the flag named."""

from __future__ import annotations

import pytest

from radixlm.args import build_server_parser, server_config_from_args
from radixlm.distributed.launch import local_ranks


def _config(*argv: str):
    return server_config_from_args(build_server_parser().parse_args(list(argv)))


def test_flags_reach_the_load_config():
    load = _config("--tp", "4", "--nnodes", "2", "--node-rank", "1",
                   "--dist-init-addr", "10.0.0.1:29500").engine.load  # fmt: skip
    assert (load.tp_size, load.nnodes, load.node_rank) == (4, 2, 1)
    assert load.dist_init_addr == "10.0.0.1:29500"
    assert list(local_ranks(load)) == [2, 3]  # host 1 runs the second half of the ranks
    assert _config().engine.load.tp_size == 1


@pytest.mark.parametrize(
    ("argv", "flag"),
    [(("--tp", "0"), "--tp-size"), (("--tp", "3", "--nnodes", "2"), "--tp-size"),
     (("--tp", "2", "--nnodes", "2", "--node-rank", "2"), "--node-rank"),
     (("--tp", "2", "--nnodes", "2"), "--dist-init-addr")],
)  # fmt: skip
def test_bad_combinations_name_the_flag(argv, flag):
    with pytest.raises(ValueError, match=flag):
        _config(*argv)
