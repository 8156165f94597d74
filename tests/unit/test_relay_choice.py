"""Which host a relayed /v1 request goes to, and when a host relays one at all (aigwd/fleet/relay.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from aigwd.fleet.registry import FleetRegistry, Host
from aigwd.fleet.relay import Relay, trusted_headers_in
from aigwd.service import ModelService


def _host(node: str, *, age: float = 0.0, stopped: bool = False, load: float = 0.0, healthy: bool = True,
          replicas: int = 1) -> Host:
    row = {"is_healthy": True, "load": load, "waiting": 0,
           "replicas": [{"index": i, "is_healthy": healthy} for i in range(replicas)]}
    return Host(node=node, address=f"http://{node}:8080", hostname=node, pid=1, version="x", started_at=0.0,
                age_s=age, stopped=stopped, models={"gemma": row})


@dataclass
class _Registry:
    hosts_now: list[Host]
    node: str = "me"
    lost_after_s: float = 5.0

    def hosts(self) -> list[Host]:
        return self.hosts_now


@dataclass
class _Service:
    replicas: list[Any] = field(default_factory=list)
    up: bool = True
    name: str = "gemma"

    def accepting(self) -> bool:
        return self.up


def _relay(*hosts: Host) -> Relay:
    return Relay(cast(FleetRegistry, _Registry(list(hosts))), "s" * 40, deadline_s=60)


def test_the_least_loaded_live_host_with_a_healthy_server_goes_first() -> None:
    relay = _relay(_host("me"), _host("busy", load=0.9), _host("idle", load=0.1), _host("lost", age=60),
                   _host("stopped", stopped=True), _host("sick", healthy=False), _host("elsewhere", replicas=0),
                   _host("idle2", load=0.1))
    assert [h.node for h in relay.candidates("gemma")] == ["idle", "idle2", "busy"]
    assert relay.candidates("other") == []


def test_a_host_relays_when_it_has_no_server_or_all_of_its_are_down_and_another_serves() -> None:
    relay = _relay(_host("gpu2"))
    none_here = cast(ModelService, _Service())
    down_here = cast(ModelService, _Service(replicas=[object()], up=False))
    up_here = cast(ModelService, _Service(replicas=[object()], up=True))
    assert relay.wanted(none_here)
    assert relay.wanted(down_here)
    assert not relay.wanted(up_here)
    # All down here and nobody else serves it: it stays (and waits for its server here, as without a fleet).
    assert not _relay(_host("gpu2", healthy=False)).wanted(down_here)
    assert _relay().wanted(none_here)  # relayed, to answer 503 saying no live host serves it


def test_only_the_identity_headers_count_as_trusted() -> None:
    assert trusted_headers_in(["Authorization", "X-Aigw-Fleet-Secret", "X-Client-ID"]) is None
    assert trusted_headers_in(["x-aigw-fleet-subject"]) == "x-aigw-fleet-subject"
