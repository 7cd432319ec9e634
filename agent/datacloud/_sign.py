"""Signs one RS256 JWT assertion in a process of its own (the child is ``_sign_child.py``).

Why a process: the agent logs in at start and about every two hours, and PyJWT with cryptography,
once imported, stay resident for the agent's whole life: about 9 MB of a gateway's RAM
(cryptography's Rust extension alone maps 7 MB), a sixth of the agent's footprint, for one
signature every two hours. A child interpreter pays for them only while it signs (measured on
the reference site: bench/agent.py). The child runs isolated (``-I``) and imports nothing of the
agent: a signature costs about 0.2 s of CPU here.

Protocol: the parent writes ``{"claims": {...}, "key": "<PEM>"}`` as JSON to the child's stdin
(the key never appears in an argument list or the environment); the child writes the assertion to
stdout and exits 0, or exits 2 with the exception's type name on stderr when the key cannot sign
(never anything of the key itself).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Final

from agent.errors import AuthError

# Starting an interpreter and importing cryptography takes about a second on a Raspberry Pi 3.
SIGN_TIMEOUT_SECONDS: Final = 60.0
_BAD_KEY_EXIT: Final = 2
_MAX_OUTPUT_BYTES: Final = 64 * 1024
_CHILD: Final = Path(__file__).with_name("_sign_child.py")


async def sign_rs256(claims: dict[str, Any], key_pem: bytes, *, key_name: str) -> str:
    """The RS256 JWT of ``claims`` signed with ``key_pem``, made by a child interpreter.

    Raises:
        AuthError: the key cannot sign (not an unencrypted PEM RSA key), or the child failed.
    """
    payload = json.dumps({"claims": claims, "key": key_pem.decode("ascii", "replace")}).encode()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", str(_CHILD), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise AuthError(f"cannot start the JWT signer ({sys.executable}): {exc.strerror}",
                        hint="the agent signs its login in a child process of the same Python; "
                             "check that the service may start processes") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(payload), SIGN_TIMEOUT_SECONDS)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AuthError(f"the JWT signer did not answer within {SIGN_TIMEOUT_SECONDS:.0f}s",
                        hint="the gateway is overloaded or out of memory; the agent retries") from None
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode == _BAD_KEY_EXIT:
        reason = err.decode("ascii", "replace").strip()[:80]
        raise AuthError(f"cannot sign the JWT with {key_name}: {reason}",
                        hint="the private key must be an unencrypted PEM RSA key")
    if proc.returncode != 0 or not out or len(out) > _MAX_OUTPUT_BYTES:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise AuthError(f"the JWT signer failed (exit code {proc.returncode}): {tail[0][:200]}",
                        hint="reinstall the agent (PyJWT and cryptography must be importable)")
    return out.decode("ascii").strip()
