"""Flag rendering, the GPU inventory and the port allocator."""

from __future__ import annotations

import pytest

from orchestrator.errors import ConfigError
from orchestrator.plan.argv import check_flag_map
from orchestrator.sglang_config import flags_to_argv as render_flags
from orchestrator.plan.inventory import Inventory
from orchestrator.plan.ports import SGLANG_PORT_SPAN, PortAllocator


def test_flags_follow_sglang_config_semantics():
    argv = render_flags(
        {
            "enable-metrics": True,
            "disable-radix-cache": False,
            "load-format": None,
            "mem-fraction-static": 0.85,
            "cuda-graph-bs": [1, 2, 4],
            "kv-events-config": {"publisher": "zmq", "topic": "kv-events"},
        }
    )
    assert argv == [
        "--enable-metrics",
        "--mem-fraction-static",
        "0.85",
        "--cuda-graph-bs",
        "1",
        "2",
        "4",
        "--kv-events-config",
        '{"publisher":"zmq","topic":"kv-events"}',
    ]


@pytest.mark.parametrize(
    "key, hint", [("mem_fraction_static", "mem-fraction-static"), ("--page-size", "page-size")]
)
def test_flag_maps_want_dashed_names(key, hint):
    with pytest.raises(ConfigError, match=hint):
        check_flag_map({key: 1}, "deployment.groups.agg.sglang", "agg")


def test_flag_maps_may_not_set_what_the_plan_owns():
    with pytest.raises(ConfigError, match=r"set deployment.groups.agg.tp instead"):
        check_flag_map({"tp-size": 2}, "deployment.groups.agg.sglang", "agg")


def test_inventory_packs_nodes_then_takes_whole_nodes():
    inv = Inventory(nodes=3, gpus_per_node=8)
    assert inv.place(4, "a")[0].gpus == (0, 1, 2, 3)
    assert inv.place(6, "b")[0].node == 1, "does not fit beside a, goes to the next node"
    two = inv.place(8, "c")
    assert [(s.node, len(s.gpus)) for s in two] == [(2, 8)]
    with pytest.raises(ConfigError, match="whole free nodes"):
        inv.place(16, "d")
    with pytest.raises(ConfigError, match="not a whole number of nodes"):
        Inventory(2, 8).place(12, "e")


def test_ports_never_repeat_and_explicit_clashes_are_errors():
    ports = PortAllocator(base=20000, sglang_base=20003)
    ports.reserve(20001, "frontend.port")
    first = ports.take("a")
    run = ports.take("b", count=3)
    assert first == 20000
    block = ports.take_sglang_block("c")
    assert run >= block + SGLANG_PORT_SPAN or run + 3 <= block
    assert 20001 not in range(run, run + 3)
    with pytest.raises(ConfigError, match="claimed by both frontend.port and d"):
        ports.reserve(20001, "d")
    with pytest.raises(ConfigError, match="outside"):
        PortAllocator(base=65535, sglang_base=30000).take("e", count=2)
