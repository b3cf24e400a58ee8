"""Worker load, as the workers report it on the event plane.

One SUB socket follows every registered worker's event address (connected when the
worker joins, disconnected when it leaves) and keeps each instance's last reported
decode load, which the load-aware routers weigh alongside this frontend's own
in-flight counts.
"""

from __future__ import annotations

import logging

import msgspec
import zmq
import zmq.asyncio

from orchestrator.frontend.models import ModelRegistry
from orchestrator.planes.events import LOAD_TOPIC, load_decoder

log = logging.getLogger(__name__)


class LoadListener:
    def __init__(self, models: ModelRegistry):
        self.models = models
        self._socket = zmq.asyncio.Context.instance().socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SUBSCRIBE, LOAD_TOPIC)
        self._connected: set[str] = set()

    def follow(self) -> None:
        """Connect to the workers that joined, disconnect from those that left."""
        wanted = {
            i.record.event_address
            for model in self.models.models.values()
            for i in model.instances.values()
            if i.record.event_address
        }
        for address in wanted - self._connected:
            self._socket.connect(address)
        for address in self._connected - wanted:
            self._socket.disconnect(address)
        self._connected = wanted

    async def run(self) -> None:
        while True:
            _, _, payload = await self._socket.recv_multipart()
            try:
                report = load_decoder.decode(payload)
            except msgspec.DecodeError as e:
                log.warning("dropping a malformed load report: %s", e)
                continue
            instance = self.models.instance(report.instance_id)
            if instance is not None:
                instance.active_decode_blocks = sum(r.active_decode_blocks for r in report.ranks)

    def close(self) -> None:
        self._socket.close(linger=0)
