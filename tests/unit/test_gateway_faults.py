"""A fault inside the gateway while a request runs still ends that request, and tells its client."""

from __future__ import annotations

from pathlib import Path

from aigwd.config import load
from aigwd.gateway import Gateway
from aigwd.headers import RequestHeaders
from aigwd.priority import Priority
from aigwd.store import SqliteStore


async def test_unexpected_error_in_the_upstream_call_fails_the_request(tmp_path: Path) -> None:
    config = tmp_path / "aigw.toml"
    config.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n'
                      '[backends.gemma]\nkind = "chat"\nmodels = ["m"]\nport = 9\ncommand = ["true"]\n')
    cfg = load(config)
    async with SqliteStore(tmp_path / "state") as store:
        gateway = Gateway(cfg, store)
        rt = gateway.backends["gemma"]

        async def broken(body: bytes, request_id: str) -> tuple[int, bytes]:
            raise RuntimeError("a bug")

        rt.replicas[0].upstream.chat = broken  # type: ignore[method-assign]
        rt.replica_ready(0, True)
        try:
            live = await gateway.submit(rt, subject="alice", headers=RequestHeaders("app", Priority.NORMAL),
                                        model="m", payload=b'{"model": "m"}', sync=True)
            await live.done.wait()
            assert live.record.status == "failed"
            assert live.record.error == "internal error in the gateway; it was logged"
            await rt.wait_idle(5)
            stored = await store.get_request(live.record.id)
            assert stored is not None and stored.status == "failed"
            assert rt.queues.processing() == 0
        finally:
            await gateway.close()
