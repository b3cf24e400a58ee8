"""The launch plans of the checked-in recipes and of the embedded default."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml

from orchestrator.errors import ConfigError
from orchestrator.roles import Role, WorkerType
from tests.support import RECIPES


def flag(argv, name):
    """The value after `name` in an argv (None if absent)."""
    argv = list(argv)
    return argv[argv.index(name) + 1] if name in argv else None


def all_ports(plan):
    return [port for p in plan.processes for port in p.ports.values()]


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_plans_with_unique_ports_and_gpus(plan_of, recipe):
    plan = plan_of(f"+recipe={recipe}", "engine=mock")
    ports = all_ports(plan)
    assert len(ports) == len(set(ports)), Counter(ports).most_common(3)
    used = [(p.node, gpu) for p in plan.processes for gpu in p.gpus]
    assert len(used) == len(set(used)), "a GPU is given to two processes"
    assert all(0 <= gpu < 8 for _, gpu in used)
    workers = [p for p in plan.processes if p.role is Role.worker]
    frontend = [p for p in plan.processes if p.role is Role.frontend]
    assert workers and len(frontend) == 1
    assert all(p.stage < frontend[0].stage for p in workers), "the frontend starts after the workers"
    for p in workers:
        assert p.argv[1:3] == ("-m", "orchestrator.worker")
        assert p.env["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, p.gpus))
        assert p.env["DYN_SYSTEM_PORT"] == str(p.ports["system"])
        assert p.health_url == f"http://127.0.0.1:{p.ports['system']}/health"
        assert flag(p.argv, "--engine") == "mock"


def test_llama70b_disagg_plan_in_detail(plan_of, tmp_path):
    plan = plan_of("+recipe=llama70b_disagg", "engine=mock")
    by_name = {p.name: p for p in plan.processes}
    assert sorted(by_name) == ["decode-0", "frontend", "prefill-0", "prefill-1"]
    prefills = [by_name["prefill-0"], by_name["prefill-1"]]
    decode = by_name["decode-0"]

    gpu_sets = [set(p.gpus) for p in prefills + [decode]]
    assert [len(s) for s in gpu_sets] == [2, 2, 4]
    assert set().union(*gpu_sets) == set(range(8)), "the three workers fill the node exactly"
    assert sum(map(len, gpu_sets)) == 8, "GPU sets are disjoint"

    disagg_file = str(tmp_path / "run" / "disagg.yaml")
    sections = yaml.safe_load(plan.files[disagg_file])
    assert sections["prefill"]["disaggregation-transfer-backend"] == "nixl"
    assert sections["decode"]["disaggregation-transfer-backend"] == "nixl"
    for p, role in [(prefills[0], "prefill"), (prefills[1], "prefill"), (decode, "decode")]:
        assert flag(p.argv, "--disagg-config") == disagg_file
        assert flag(p.argv, "--disagg-config-key") == role
        assert flag(p.argv, "--disaggregation-mode") == role
        assert flag(p.argv, "--page-size") == "16"
        assert "--skip-tokenizer-init" in p.argv
        assert flag(p.argv, "--model-path") == "/models/RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic"
    assert [flag(p.argv, "--tp-size") for p in prefills + [decode]] == ["2", "2", "4"]
    # Each prefill replica runs its own bootstrap server: the section's port, then the next.
    assert [p.ports["bootstrap"] for p in prefills] == [12345, 12346]
    assert [flag(p.argv, "--disaggregation-bootstrap-port") for p in prefills] == ["12345", "12346"]
    assert flag(decode.argv, "--disaggregation-bootstrap-port") is None
    # KV events only where the router reads them: the prefill pool.
    events = json.loads(flag(prefills[0].argv, "--kv-events-config"))
    assert events["publisher"] == "zmq" and events["bind"] is True
    assert events["endpoint"] == f"tcp://127.0.0.1:{prefills[0].ports['kv_events_dp0']}"
    assert flag(decode.argv, "--kv-events-config") is None
    # Discovery components: prefill registers on `prefill`, decode on `backend`.
    assert [flag(p.argv, "--component") for p in prefills + [decode]] == ["prefill", "prefill", "backend"]
    frontend = by_name["frontend"]
    assert flag(frontend.argv, "--router-mode") == "kv"
    assert frontend.ports == {"http": 8000}
    assert plan.url == "http://127.0.0.1:8000"
    assert plan.served_name == "meta-llama/Llama-3.3-70B-Instruct"
    ports = all_ports(plan)
    assert len(ports) == len(set(ports))


def test_embedded_default_is_one_frontend_and_one_aggregated_mock_worker(plan_of):
    plan = plan_of()
    worker, frontend = plan.processes
    assert worker.worker_type is WorkerType.aggregated and frontend.role is Role.frontend
    assert flag(worker.argv, "--engine") == "mock"
    assert flag(worker.argv, "--served-model-name") == "tiny"
    assert flag(worker.argv, "--tokenizer-path") is None, "the tiny model carries its own tokenizer"
    assert plan.url == "http://127.0.0.1:8000"
    assert flag(frontend.argv, "--router-mode") == "round-robin"
    assert not plan.files, "no disagg sections, no file"


def test_deepseek_attention_dp_spans_nodes(plan_of):
    plan = plan_of("+recipe=deepseek_r1_disagg_dp", "engine=mock")
    by_name = {p.name: p for p in plan.processes}
    assert sorted(by_name) == ["decode-0", "decode-0.1", "frontend", "prefill-0", "prefill-1"]
    assert [by_name[n].node for n in ("prefill-0", "prefill-1", "decode-0", "decode-0.1")] == [0, 1, 2, 3]
    leader, follower = by_name["decode-0"], by_name["decode-0.1"]
    assert flag(leader.argv, "--nnodes") == flag(follower.argv, "--nnodes") == "2"
    assert [flag(leader.argv, "--node-rank"), flag(follower.argv, "--node-rank")] == ["0", "1"]
    assert flag(leader.argv, "--dist-init-addr") == flag(follower.argv, "--dist-init-addr")
    assert flag(leader.argv, "--attn-dp-size") == "16" and flag(leader.argv, "--tp-size") == "16"
    prefill = by_name["prefill-0"]
    assert flag(prefill.argv, "--attn-dp-size") == "8"
    # One SGLang event stream per DP rank, at base port + rank.
    streams = [prefill.ports[f"kv_events_dp{r}"] for r in range(8)]
    assert streams == list(range(streams[0], streams[0] + 8))
    assert flag(prefill.argv, "--dyn-reasoning-parser") == "deepseek_r1"
    assert "--mock-mla" in prefill.argv and flag(prefill.argv, "--mock-active-params") == "37000000000"


def test_embedding_worker_tokenizes_itself(plan_of):
    plan = plan_of("+recipe=embedding", "engine=mock")
    worker = plan.processes[0]
    assert worker.worker_type is WorkerType.embedding
    assert "--embedding-worker" in worker.argv
    assert "--skip-tokenizer-init" not in worker.argv


def test_mock_engine_without_local_weights_uses_the_shipped_tokenizer(plan_of):
    plan = plan_of("+recipe=llama8b_agg", "engine=mock")
    assert flag(plan.processes[0].argv, "--tokenizer-path").endswith("orchestrator/models/tiny")


def test_overrides_beat_the_recipe(plan_of):
    plan = plan_of("+recipe=llama8b_kv_router", "engine=mock", "deployment.groups.agg.replicas=2", "router=round_robin")
    assert [p.name for p in plan.processes] == ["agg-0", "agg-1", "frontend"]
    assert flag(plan.processes[-1].argv, "--router-mode") == "round-robin"


def test_fp8_kv_cache_and_approximate_routing_render(plan_of):
    plan = plan_of(
        "+recipe=llama8b_kv_router", "engine=mock", "model.kv_dtype=fp8", "router.use_kv_events=false"
    )
    assert flag(plan.processes[0].argv, "--kv-cache-dtype") == "fp8_e4m3"
    assert "--no-router-kv-events" in plan.processes[-1].argv


def test_plan_json_is_the_documented_shape(plan_of):
    plan = plan_of("+recipe=llama70b_disagg", "engine=mock")
    doc = json.loads(plan.to_json())
    for entry in doc["processes"]:
        assert {"name", "role", "worker_type", "argv", "env", "gpus", "node", "ports", "health_url"} <= set(entry)


def test_added_replicas_get_free_gpus_and_unused_ports(plan_of):
    from orchestrator.plan.build import add_replicas
    from tests.support import compose_config

    cfg = compose_config("+recipe=llama8b_kv_router", "engine=mock")
    plan = plan_of("+recipe=llama8b_kv_router", "engine=mock")
    more = add_replicas(cfg, plan, "agg", 3)
    assert [p.name for p in more] == ["agg-4", "agg-5", "agg-6"]
    taken = {(p.node, g) for p in plan.processes for g in p.gpus}
    assert not taken & {(p.node, g) for p in more for g in p.gpus} and len({g for p in more for g in p.gpus}) == 3
    used = all_ports(plan)
    assert not set(used) & set(all_ports(type(plan)(plan.run_dir, tuple(more), {}, plan.url, plan.served_name)))
    with pytest.raises(ConfigError, match="no node has 1 free"):
        add_replicas(cfg, plan, "agg", 5)


def test_multi_node_leaders_list_their_rendezvous_port(plan_of):
    plan = plan_of("+recipe=deepseek_r1_disagg_dp", "engine=mock")
    leader = next(p for p in plan.processes if p.name == "decode-0")
    assert flag(leader.argv, "--dist-init-addr").endswith(f":{leader.ports['dist_init']}")
