"""The SGLang engine's adapter: our request in SGLang's terms (`generate_kwargs`,
`sampling_params`) and SGLang's output dicts as our chunks (`to_chunk`).

The first half needs no SGLang: output dicts written in SGLang 0.5.23's shapes
(`TokenizerManager._handle_batch_output` and `add_logprob_to_meta_info` in
python/sglang/srt/managers/tokenizer_manager.py; finish reasons from
`schedule_batch.py`). The second half holds the adapter against SGLang's own types
and code: `GenerateReqInput`, `SamplingParams`, and the TokenizerManager turning
scheduler batches into the dicts `to_chunk` reads; it skips where SGLang does not
import (tests/sglang_env.py)."""

from __future__ import annotations

import array
import ast
import asyncio
import dataclasses
import importlib.metadata
from pathlib import Path

import pytest

from orchestrator.engine.base import EngineError
from orchestrator.engine.sglang_engine import generate_kwargs, sampling_params, to_chunk
from orchestrator.planes import messages as m
from tests.sglang_env import require_sglang

RID = "0f3c5e2a9b7d4c1e8a6f2b9d3c7e1a5f"
VOCAB = 129280


def request(**overrides) -> m.GenerateRequest:
    fields = dict(request_id=RID, token_ids=[5, 6, 7, 8])
    fields.update(overrides)
    return m.GenerateRequest(**fields)


BOOTSTRAP = m.BootstrapInfo(host="10.0.0.7", port=12345, room=2**63 - 5)
FULL_SAMPLING = dict(
    sampling=m.SamplingOptions(temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, seed=1234,
                               frequency_penalty=0.5, presence_penalty=-0.5, repetition_penalty=1.1),
    stop=m.StopConditions(max_tokens=64, stop_token_ids=(2, 7), ignore_eos=True),
)  # fmt: skip
REQUESTS = {
    "plain": request(),
    "logprobs": request(top_logprobs=3),
    "chosen-logprob-only": request(top_logprobs=0),
    "prefill-leg": request(bootstrap=BOOTSTRAP, stop=m.StopConditions(max_tokens=1)),
    "decode-leg-on-dp-rank": request(bootstrap=BOOTSTRAP, dp_rank=3, top_logprobs=2),
    "all-sampling-options": request(**FULL_SAMPLING),
    "greedy": request(sampling=m.SamplingOptions(temperature=0.0)),
}


# --- SGLang's output dicts, as written in 0.5.23's tokenizer_manager.py -----------------


def output(ids, finish=None, logprobs=None, tops=None, total=None, prompt=4, completion=None, cached=0):
    """One streamed item for `skip_tokenizer_init=True` with disjoint streaming: the new
    token ids; logprob lists sliced to the new positions, while
    `output_token_logprobs_length` counts all of them."""
    meta = {"id": RID, "finish_reason": finish, "prompt_tokens": prompt, "weight_version": "default",
            "num_retractions": 0, "reasoning_tokens": 0, "completion_tokens": completion or len(ids),
            "cached_tokens": cached}  # fmt: skip
    if logprobs is not None:
        meta.update(input_token_logprobs=[], output_token_logprobs=logprobs,
                    output_token_logprobs_length=total if total is not None else len(logprobs))  # fmt: skip
    if tops is not None:
        meta.update(input_top_logprobs=[], output_top_logprobs=tops)
    return {"output_ids": list(ids), "meta_info": meta}


def stream(outputs):
    """What `SGLangEngine.generate` does with each item (without an engine)."""
    chunks, emitted, seen = [], 0, 0
    for out in outputs:
        chunk, seen = to_chunk(RID, out, emitted, seen)
        emitted += len(chunk.token_ids)
        chunk.completion_tokens = emitted
        if chunk.token_ids or chunk.finish_reason:
            chunks.append(chunk)
    return chunks


def test_disjoint_stream_with_logprobs_gives_each_token_its_own_logprob():
    chunks = stream([
        output([10, 11], logprobs=[(-0.1, 10, None), (-0.2, 11, None)], total=2,
               tops=[[(-0.1, 10, None), (-1.5, 99, None)], [(-0.2, 11, None), (-2.5, 98, None)]]),
        output([12], logprobs=[(-0.3, 12, None)], total=3, tops=[[(-0.3, 12, None), (-3.5, 97, None)]]),
        output([13], finish={"type": "length", "length": 4}, logprobs=[(-0.4, 13, None)], total=4,
               tops=[None], completion=4, cached=2),
    ])  # fmt: skip
    assert [c.token_ids for c in chunks] == [[10, 11], [12], [13]]
    assert [c.logprobs for c in chunks] == [[-0.1, -0.2], [-0.3], [-0.4]]
    assert chunks[1].top_logprobs == [[m.TopLogprob(12, -0.3), m.TopLogprob(97, -3.5)]]
    assert chunks[2].top_logprobs == [[]], "a position without top logprobs stays a position"
    last = chunks[-1]
    assert (last.finish_reason, last.matched_stop) == ("length", None)
    assert (last.prompt_tokens, last.completion_tokens, last.cached_tokens) == (4, 4, 2)
    assert all(c.finish_reason is None for c in chunks[:-1])


def test_cumulative_logprob_lists_of_older_sglang_are_sliced():
    """Before 0.5.23 the logprob lists stayed cumulative under disjoint streaming and had
    no `output_token_logprobs_length`."""
    outs = [output([10], logprobs=[(-0.1, 10, None)]), output([11], logprobs=[(-0.1, 10, None), (-0.2, 11, None)])]
    for out in outs:
        del out["meta_info"]["output_token_logprobs_length"]
    assert [c.logprobs for c in stream(outs)] == [[-0.1], [-0.2]]


def test_without_top_logprobs_requested_chunks_carry_none():
    (chunk,) = stream([output([10], logprobs=[(-0.1, 10, None)], finish={"type": "length", "length": 1})])
    assert chunk.logprobs == [-0.1] and chunk.top_logprobs is None
    (chunk,) = stream([output([10], finish={"type": "length", "length": 1})])
    assert chunk.logprobs is None and chunk.top_logprobs is None


@pytest.mark.parametrize(
    "finish, reason, matched",
    [
        ({"type": "stop", "matched": 2}, "stop", 2),  # FINISH_MATCHED_TOKEN: EOS or a stop token id
        ({"type": "stop", "matched": "</s>"}, "stop", None),  # FINISH_MATCHED_STR
        ({"type": "length", "length": 16}, "length", None),
        ({"type": "abort", "message": "Abort in waiting queue", "status_code": None, "err_type": None}, "abort", None),
    ],
    ids=["stop-token", "stop-string", "length", "user-abort"],
)
def test_final_chunk_names_why_the_request_ended(finish, reason, matched):
    chunks = stream([output([10]), output([] if reason == "abort" else [2], finish=finish)])
    assert (chunks[-1].finish_reason, chunks[-1].matched_stop) == (reason, matched)
    assert sum(len(c.token_ids) for c in chunks) == chunks[-1].completion_tokens


@pytest.mark.parametrize(
    "status, kind",
    [(400, m.ErrorKind.INVALID), (503, m.ErrorKind.OVERLOADED), (500, m.ErrorKind.INTERNAL)],
)
def test_an_abort_with_an_http_status_is_an_error_not_a_finish(status, kind):
    """SGLang ends a streamed request it rejects (validation 400, queue timeout 503, a
    failed KV transfer 500) with an abort chunk carrying a status code."""
    finish = {"type": "abort", "message": "KV transfer failed for room 7", "status_code": status, "err_type": None}
    with pytest.raises(EngineError) as caught:
        stream([output([10]), output([], finish=finish)])
    assert caught.value.kind == kind and "KV transfer failed for room 7" in str(caught.value)


def test_generate_kwargs_map_our_request_onto_sglangs_arguments():
    kw = generate_kwargs(REQUESTS["decode-leg-on-dp-rank"])
    assert kw["input_ids"] == [5, 6, 7, 8] and kw["rid"] == RID and kw["stream"] is True
    assert (kw["bootstrap_host"], kw["bootstrap_port"], kw["bootstrap_room"]) == ("10.0.0.7", 12345, 2**63 - 5)
    assert (kw["return_logprob"], kw["top_logprobs_num"], kw["routed_dp_rank"]) == (True, 2, 3)
    plain = generate_kwargs(REQUESTS["plain"])
    assert not {"return_logprob", "bootstrap_room", "routed_dp_rank"} & plain.keys()


# --- Against SGLang 0.5.23's own types and code ------------------------------------------


@pytest.fixture(scope="module")
def sgl():
    io_struct, sampling, schedule_batch = require_sglang(
        "sglang.srt.managers.io_struct", "sglang.srt.sampling.sampling_params", "sglang.srt.managers.schedule_batch"
    )
    return io_struct, sampling, schedule_batch


def engine_generate_parameters() -> set[str]:
    """`Engine.async_generate`'s parameters, read from its source: importing the engine
    module would install uvloop's event-loop policy in this process."""
    source = Path(importlib.metadata.distribution("sglang").locate_file("sglang/srt/entrypoints/engine.py"))
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.AsyncFunctionDef) and node.name == "async_generate":
            return {a.arg for a in node.args.args + node.args.kwonlyargs} - {"self"}
    raise AssertionError("Engine.async_generate not found")


@pytest.mark.parametrize("name", REQUESTS)
def test_generate_kwargs_build_a_valid_generate_req_input(sgl, name):
    io_struct, _, _ = sgl
    kw = generate_kwargs(REQUESTS[name])
    assert kw.keys() <= engine_generate_parameters()
    fields = {f.name for f in dataclasses.fields(io_struct.GenerateReqInput)}
    assert kw.keys() - fields <= {"prompt"}  # the one argument Engine.async_generate renames (to `text`)
    obj = io_struct.GenerateReqInput(**{k: v for k, v in kw.items() if k in fields})
    obj.normalize_batch_and_arguments()
    assert obj.is_single and obj.rid == RID and obj.input_ids == [5, 6, 7, 8] and obj.stream
    r = REQUESTS[name]
    assert obj.return_logprob is (r.top_logprobs is not None)
    if r.top_logprobs is not None:
        assert (obj.top_logprobs_num, obj.logprob_start_len) == (r.top_logprobs, -1)  # output tokens only
    if r.bootstrap is not None:
        assert (obj.bootstrap_host, obj.bootstrap_port, obj.bootstrap_room) == (BOOTSTRAP.host, BOOTSTRAP.port, BOOTSTRAP.room)
    assert obj.routed_dp_rank == r.dp_rank


@pytest.mark.parametrize("name", REQUESTS)
def test_sampling_params_pass_sglangs_checks_without_a_tokenizer(sgl, name):
    """What the TokenizerManager does with them: construct, normalize (no tokenizer:
    our workers run with --skip-tokenizer-init), verify against the vocabulary."""
    _, sampling, _ = sgl
    r = REQUESTS[name]
    params = sampling.SamplingParams(**sampling_params(r))
    params.normalize(None)
    params.verify(VOCAB)
    assert params.max_new_tokens == r.stop.max_tokens and params.ignore_eos == r.stop.ignore_eos
    assert params.stop_token_ids == (set(r.stop.stop_token_ids) or None)
    assert params.sampling_seed == r.sampling.seed
    if r.sampling.temperature == 0:
        assert params.top_k == 1, "SGLang samples greedily at temperature 0"
    else:
        assert (params.temperature, params.top_p, params.min_p) == (r.sampling.temperature, r.sampling.top_p, r.sampling.min_p)
        assert params.top_k == (r.sampling.top_k if r.sampling.top_k > 0 else sampling.TOP_K_ALL)


def test_min_tokens_is_refused_by_sglang_without_a_tokenizer(sgl):
    """SGLang needs its tokenizer's EOS to hold min_new_tokens back, so a worker started
    with --skip-tokenizer-init rejects such a request (a ValueError: invalid request)."""
    _, sampling, _ = sgl
    params = sampling.SamplingParams(**sampling_params(request(stop=m.StopConditions(max_tokens=8, min_tokens=2))))
    with pytest.raises(ValueError, match="min_new_tokens"):
        params.normalize(None)


@pytest.fixture(scope="module")
def tokenizer_manager(sgl):
    """SGLang's TokenizerManager, only as far as `_handle_batch_output`: what turns the
    scheduler's `BatchTokenIDOutput`s into the dicts `Engine.async_generate` yields."""
    server_args, tm_module, runtime_context, req_time_stats = require_sglang(
        "sglang.srt.server_args",
        "sglang.srt.managers.tokenizer_manager",
        "sglang.srt.runtime_context",
        "sglang.srt.observability.req_time_stats",
    )
    if runtime_context.publish_role() is None:  # SGLang's process-wide config, as its Engine publishes it
        runtime_context.publish(server_args.ServerArgs(model_path="dummy", skip_tokenizer_init=True), role="tokenizer")
    tm = object.__new__(tm_module.TokenizerManager)  # no scheduler, no ZMQ sockets
    tm.__dict__.update(rid_to_state={}, enable_metrics=False, incremental_streaming_output=True,
                       skip_tokenizer_init=True, tokenizer=None, enable_lora=False,
                       dump_requests_folder=None, crash_dump_folder=None)  # fmt: skip
    return tm, tm_module.ReqState, req_time_stats.APIServerReqTimeStats


def sglang_outputs(sgl, tokenizer_manager, req: m.GenerateRequest, steps) -> list[dict]:
    """The dicts SGLang yields for `req` when its scheduler sends `steps`: (new token ids,
    their logprobs, finish reason object or None) per batch."""
    io_struct, _, _ = sgl
    tm, req_state, time_stats = tokenizer_manager
    obj = io_struct.GenerateReqInput(**generate_kwargs(req))
    obj.normalize_batch_and_arguments()
    state = req_state([], False, asyncio.Event(), obj, time_stats())
    tm.rid_to_state[RID] = state
    blank = dict.fromkeys(io_struct.BatchTokenIDOutput.__struct_fields__)
    done = 0

    async def run():
        nonlocal done
        for ids, logprobs, finish in steps:
            done += len(ids)
            k = req.top_logprobs or 0
            batch = dict(
                blank, rids=[RID], finished_reasons=[finish.to_json() if finish else None],
                decoded_texts=[""], decode_ids=[array.array("q", ids)], read_offsets=[0],
                output_ids=[array.array("q", ids)], skip_special_tokens=[True],
                spaces_between_special_tokens=[True], no_stop_trim=[False], prompt_tokens=[len(req.token_ids)],
                reasoning_tokens=[0], completion_tokens=[done], cached_tokens=[0], retraction_counts=[0],
                output_token_logprobs_val=[logprobs], output_token_logprobs_idx=[ids],
                output_top_logprobs_val=[[[lp - j for j in range(k)] for lp in logprobs]],
                output_top_logprobs_idx=[[[t + j for j in range(k)] for t in ids]],
            )  # fmt: skip
            await tm._handle_batch_output(io_struct.BatchTokenIDOutput(**batch))

    asyncio.run(run())
    tm.rid_to_state.pop(RID, None)
    return state.out_list


def test_to_chunk_reads_the_dicts_sglangs_tokenizer_manager_yields(sgl, tokenizer_manager):
    _, _, schedule_batch = sgl
    req = request(top_logprobs=2)
    steps = [([10, 11], [-0.1, -0.2], None), ([12], [-0.3], None), ([2], [-0.4], schedule_batch.FINISH_MATCHED_TOKEN(2))]
    chunks = stream(sglang_outputs(sgl, tokenizer_manager, req, steps))
    assert [c.token_ids for c in chunks] == [[10, 11], [12], [2]]
    assert [c.logprobs for c in chunks] == [[-0.1, -0.2], [-0.3], [-0.4]]
    assert chunks[1].top_logprobs == [[m.TopLogprob(12, -0.3), m.TopLogprob(13, -1.3)]]
    assert (chunks[-1].finish_reason, chunks[-1].matched_stop, chunks[-1].completion_tokens) == ("stop", 2, 4)
    assert chunks[-1].prompt_tokens == 4


@pytest.mark.parametrize(
    "finish, reason",
    [(("FINISH_LENGTH", 3), "length"), (("FINISH_MATCHED_STR", "</s>"), "stop"), (("FINISH_ABORT",), "abort")],
)
def test_sglangs_finish_reasons_end_our_stream(sgl, tokenizer_manager, finish, reason):
    _, _, schedule_batch = sgl
    cls, *args = finish
    steps = [([10], [-0.1], None), ([11, 12], [-0.2, -0.3], getattr(schedule_batch, cls)(*args))]
    chunks = stream(sglang_outputs(sgl, tokenizer_manager, request(top_logprobs=0), steps))
    assert [c.token_ids for c in chunks] == [[10], [11, 12]]
    assert [c.logprobs for c in chunks] == [[-0.1], [-0.2, -0.3]]
    assert chunks[-1].finish_reason == reason and chunks[-1].top_logprobs is None


def test_sglangs_error_abort_becomes_our_error(sgl, tokenizer_manager):
    _, _, schedule_batch = sgl
    abort = schedule_batch.FINISH_ABORT("Request waiting timeout reached.", 503)
    with pytest.raises(EngineError) as caught:
        stream(sglang_outputs(sgl, tokenizer_manager, request(), [([10], [-0.1], None), ([], [], abort)]))
    assert caught.value.kind == m.ErrorKind.OVERLOADED
