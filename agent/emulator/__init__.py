"""A faithful local Salesforce Data Cloud (Ingestion API) for tests, demos and site trials.

Independent of the agent's client code on purpose: it reads the schema file, checks JWTs and
validates records itself, so it can't agree with the client's bugs. See
``/work/shared/datacloud-api.md`` for the wire facts it follows.

    async with Emulator(EmulatorSettings(public_key_pem=pem)) as emu:
        ...  # point the client at emu.url; await emu.wait_landed(n, timeout=5)
"""

from agent.emulator.server import Emulator, EmulatorStats
from agent.emulator.settings import EmulatorSettings, Faults
from agent.emulator.store import LandedStore

__all__ = ["Emulator", "EmulatorSettings", "EmulatorStats", "Faults", "LandedStore"]
