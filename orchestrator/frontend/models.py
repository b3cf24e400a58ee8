"""The models the frontend serves, as discovery shows them.

Every snapshot of the namespace's live instances updates the registry: a model exists
while at least one of its instances is registered; each instance gets one request-plane
client (opened when it appears, closed when it leaves), the load it last reported and,
per DP rank, what this frontend has routed there and is still running.
A model's tokenizer is loaded once, from the local files its model card names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.frontend.preprocess import ModelTokenizer
from orchestrator.planes.discovery.records import InstanceRecord, ModelCard
from orchestrator.planes.events import RankLoad
from orchestrator.planes.request import RequestClient
from orchestrator.roles import WorkerType

log = logging.getLogger(__name__)

GENERATING = (WorkerType.aggregated, WorkerType.decode)


@dataclass
class RankState:
    """One DP rank of an instance: the requests this frontend routed there and that are
    still running (their prompt tokens not yet prefilled, the KV blocks they hold),
    and the worker's last report, which also counts other frontends' requests."""

    inflight: int = 0
    prefill_tokens: int = 0
    decode_blocks: int = 0
    reported: RankLoad | None = None


@dataclass
class Instance:
    record: InstanceRecord
    client: RequestClient
    inflight: int = 0  # requests this frontend has in flight here
    active_decode_blocks: int = 0  # summed over the ranks, as reported
    ranks: dict[int, RankState] = field(default_factory=dict)

    def rank(self, dp_rank: int) -> RankState:
        state = self.ranks.get(dp_rank)
        if state is None:
            state = self.ranks[dp_rank] = RankState()
        return state


@dataclass
class Model:
    name: str
    card: ModelCard
    tokenizer: ModelTokenizer
    instances: dict[int, Instance] = field(default_factory=dict)

    def serving(self, *types: WorkerType) -> list[Instance]:
        return [i for i in self.instances.values() if i.record.worker_type in types]

    @property
    def is_embedding(self) -> bool:
        return any(i.record.worker_type is WorkerType.embedding for i in self.instances.values())


class ModelRegistry:
    """Lifecycle: `async with ModelRegistry()`; `apply(snapshot)` per discovery snapshot.

    An instance that leaves discovery gets no new request at once, but its client stays
    open until the requests already there have finished: a draining worker completes
    them, and only then is the connection closed."""

    def __init__(self) -> None:
        self.models: dict[str, Model] = {}
        self._stacks: dict[int, contextlib.AsyncExitStack] = {}
        self._retiring = asyncio.TaskGroup()
        self._retirements: set[asyncio.Task] = set()

    async def __aenter__(self) -> ModelRegistry:
        await self._retiring.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        for stack in self._stacks.values():
            await stack.aclose()
        self._stacks.clear()
        for task in self._retirements:  # stopping: their clients close now (each `finally` runs)
            task.cancel()
        await self._retiring.__aexit__(None, None, None)

    def instance(self, instance_id: int) -> Instance | None:
        for model in self.models.values():
            if instance_id in model.instances:
                return model.instances[instance_id]
        return None

    async def apply(self, snapshot: dict[int, InstanceRecord]) -> None:
        for model in list(self.models.values()):
            for instance_id in list(model.instances):
                if instance_id not in snapshot:
                    instance = model.instances.pop(instance_id)
                    task = self._retiring.create_task(self._retire(instance, self._stacks.pop(instance_id)))
                    self._retirements.add(task)
                    task.add_done_callback(self._retirements.discard)
                    log.info("instance %x of %s left with %d requests in flight", instance_id, model.name,
                             instance.client.inflight)
            if not model.instances:
                del self.models[model.name]
                log.info("model %s is gone", model.name)
        for instance_id, record in snapshot.items():
            if self.instance(instance_id) is not None:
                continue
            model = self.models.get(record.model.served_name)
            if model is None:
                try:  # off the loop: a large tokenizer takes a second to load
                    tokenizer = await asyncio.to_thread(ModelTokenizer.load, Path(record.model.tokenizer_path))
                except (OSError, ValueError) as e:
                    log.error("cannot serve %s: its tokenizer does not load: %s", record.model.served_name, e)
                    continue
                model = self.models[record.model.served_name] = Model(record.model.served_name, record.model, tokenizer)
                log.info("model %s is served", model.name)
            stack = contextlib.AsyncExitStack()
            client = await stack.enter_async_context(RequestClient(record.request_address))
            self._stacks[instance_id] = stack
            model.instances[instance_id] = Instance(record, client)
            log.info("instance %x of %s joined (%s at %s)", instance_id, model.name, record.worker_type.value,
                     record.request_address)

    @staticmethod
    async def _retire(instance: Instance, stack: contextlib.AsyncExitStack) -> None:
        try:
            await instance.client.idle()
        finally:
            await stack.aclose()
