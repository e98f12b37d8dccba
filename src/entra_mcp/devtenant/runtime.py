"""What every part of a running emulator shares: the state, the fault plan, the token service, its address."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from entra_mcp.devtenant.customers import RequestLog
from entra_mcp.devtenant.faults import FaultPlan
from entra_mcp.devtenant.model import EmulatorState

if TYPE_CHECKING:
    from entra_mcp.devtenant.tokens import TokenService


@dataclass
class EmulatorRuntime:
    state: EmulatorState
    faults: FaultPlan = field(default_factory=FaultPlan)
    tokens: "TokenService | None" = None  # set by server.py before serving
    base_url: str = ""  # "https://127.0.0.1:PORT", set once the port is bound; login_url == graph_url == base_url
    requests: RequestLog = field(default_factory=RequestLog)  # Graph requests per tenant (devtenant/customers.py)
