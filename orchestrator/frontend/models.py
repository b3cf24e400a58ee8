"""The models the frontend serves, as discovery shows them.

Every snapshot of the namespace's live instances updates the registry: a model exists
while at least one of its instances is registered; each instance gets one request-plane
client (opened when it appears, closed when it leaves) and the load it last reported.
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
from orchestrator.planes.request import RequestClient
from orchestrator.roles import WorkerType

log = logging.getLogger(__name__)

GENERATING = (WorkerType.aggregated, WorkerType.decode)


@dataclass
class Instance:
    record: InstanceRecord
    client: RequestClient
    inflight: int = 0  # requests this frontend has in flight here
    active_decode_blocks: int = 0


@dataclass
class Model:
    name: str
    card: ModelCard
    instances: dict[int, Instance] = field(default_factory=dict)
    _tokenizer: ModelTokenizer | None = None

    @property
    def tokenizer(self) -> ModelTokenizer:
        if self._tokenizer is None:
            self._tokenizer = ModelTokenizer.load(Path(self.card.tokenizer_path))
        return self._tokenizer

    def serving(self, *types: WorkerType) -> list[Instance]:
        return [i for i in self.instances.values() if i.record.worker_type in types]

    @property
    def is_embedding(self) -> bool:
        return any(i.record.worker_type is WorkerType.embedding for i in self.instances.values())


class ModelRegistry:
    """Lifecycle: `async with ModelRegistry()`; `apply(snapshot)` per discovery snapshot."""

    def __init__(self) -> None:
        self.models: dict[str, Model] = {}
        self._stacks: dict[int, contextlib.AsyncExitStack] = {}
        self.changed = asyncio.Event()

    async def __aenter__(self) -> ModelRegistry:
        return self

    async def __aexit__(self, *exc) -> None:
        for stack in self._stacks.values():
            await stack.aclose()
        self._stacks.clear()

    def instance(self, instance_id: int) -> Instance | None:
        for model in self.models.values():
            if instance_id in model.instances:
                return model.instances[instance_id]
        return None

    async def apply(self, snapshot: dict[int, InstanceRecord]) -> None:
        for model in list(self.models.values()):
            for instance_id in list(model.instances):
                if instance_id not in snapshot:
                    del model.instances[instance_id]
                    await self._stacks.pop(instance_id).aclose()
                    log.info("instance %x of %s left", instance_id, model.name)
            if not model.instances:
                del self.models[model.name]
                log.info("model %s is gone", model.name)
        for instance_id, record in snapshot.items():
            if self.instance(instance_id) is not None:
                continue
            model = self.models.get(record.model.served_name)
            if model is None:
                model = self.models[record.model.served_name] = Model(record.model.served_name, record.model)
                log.info("model %s is served", model.name)
            stack = contextlib.AsyncExitStack()
            client = await stack.enter_async_context(RequestClient(record.request_address))
            self._stacks[instance_id] = stack
            model.instances[instance_id] = Instance(record, client)
            log.info("instance %x of %s joined (%s at %s)", instance_id, model.name, record.worker_type.value,
                     record.request_address)
        self.changed.set()
        self.changed.clear()
