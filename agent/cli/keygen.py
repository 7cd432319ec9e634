"""`solar-agent keygen`: the key pair for the Salesforce JWT bearer login, and what to do with it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1

DEFAULT_DIR = Path("/etc/solar-agent")

_DESCRIPTION = """\
Make the RSA key pair the agent logs in to Salesforce with (OAuth 2.0 JWT bearer flow):

  <dir>/<name>.key   the private key, mode 0600; it never leaves the gateway
  <dir>/<name>.crt   a self-signed certificate (10 years) to upload to the connected app

It refuses to overwrite an existing key or certificate: a connected app may already trust it.
Then it prints the connected-app steps. Exit codes: 0 written, 1 a file exists or cannot be written."""

_EPILOG = """\
examples:
  sudo solar-agent keygen                              # /etc/solar-agent/solar-agent.key + .crt
  sudo solar-agent keygen --dir /etc/solar-agent --name plant-042
  solar-agent keygen --dir ./keys                      # on a workstation, for a lab org
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keygen", help="make the private key and certificate for the connected app",
                       description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", nargs="?", type=Path, default=None, metavar="DIR",
                   help="same as --dir (kept for `solar-agent keygen /etc/solar-agent`)")
    p.add_argument("--dir", dest="dir", type=Path, default=None, metavar="DIR",
                   help=f"where to write the files (default {DEFAULT_DIR})")
    p.add_argument("--name", default="solar-agent", help="file name stem (default solar-agent)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from agent.keys import generate_keypair

    directory: Path = args.dir or args.directory or DEFAULT_DIR
    existing = [p for p in (directory / f"{args.name}.key", directory / f"{args.name}.crt") if p.exists()]
    if existing:
        print(f"Error: {', '.join(map(str, existing))} already exist(s); keygen never overwrites a key",
              file=sys.stderr)
        print(f"Try: another --name, or move the old files away first if no connected app uses them "
              f"(mv {existing[0]} {existing[0]}.old)", file=sys.stderr)
        return EXIT_FAILED
    try:
        pair = generate_keypair(directory, args.name)
    except OSError as exc:
        print(f"Error: cannot write into {directory}: {exc.strerror}", file=sys.stderr)
        print("Try: sudo solar-agent keygen (the directory belongs to root), or --dir a writable directory"
              if os.geteuid() != 0 else f"Try: --dir a writable directory (is {directory} read-only?)", file=sys.stderr)
        return EXIT_FAILED
    key, crt = pair.private_key_path.resolve(), pair.certificate_path.resolve()
    print(f"private key  {key}  (mode 0600; keep it on this gateway)")
    print(f"certificate  {crt}  (upload this one)")
    print(f"""
Next, in Salesforce Setup (once per connected app):
  1. App Manager > New Connected App: enable OAuth settings (any callback URL, it is not used),
     tick "Use digital signatures" and upload {crt.name}.
  2. Selected OAuth scopes: cdp_ingest_api, api, refresh_token offline_access.
  3. Manage > Edit Policies: Permitted Users = "Admin approved users are pre-authorized", then add
     the profile or permission set of the integration user (else every login fails: invalid_grant).
  4. In /etc/solar-agent/site.toml, [datacloud]:
       client_id = "<the app's consumer key>"
       username = "<the integration user's login name>"
       private_key_path = "{key}"
     (under systemd, LoadCredential= can hand the key over: private_key_path = "credential:{key.name}")
  5. Check: solar-agent check-config, then solar-agent doctor (it logs in once).""")
    return EXIT_OK
