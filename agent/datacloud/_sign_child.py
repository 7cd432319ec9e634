"""The JWT signer's child process (see ``_sign.py``): JSON in on stdin, the assertion out on stdout.

Run as ``python -I _sign_child.py``; it imports nothing of the agent, so it starts in a fraction
of a second. Exit 2 with the exception's type name on stderr when the key cannot sign.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    doc = json.loads(sys.stdin.buffer.read())
    import jwt

    try:
        assertion = jwt.encode(doc["claims"], doc["key"].encode("ascii"), algorithm="RS256")
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        sys.stderr.write(type(exc).__name__)
        return 2
    sys.stdout.write(assertion)
    return 0


if __name__ == "__main__":
    sys.exit(main())
