"""Subcommands of the QA console: ``ribnode console hash-password`` and ``new-token``."""

from __future__ import annotations

import argparse
import getpass
import sys


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``ribnode console ...`` on the ``ribnode`` parser."""
    console = sub.add_parser(
        "console",
        help="QA console credentials: hash a password, make a bearer token",
        description=(
            "Make the credentials of console.users: an argon2 hash of a password "
            "(password_hash) or a new bearer token and its sha256 (token_sha256). Only the "
            "hashes go into the settings."
        ),
    )
    actions = console.add_subparsers(dest="console_command", metavar="ACTION", required=True)
    hashing = actions.add_parser(
        "hash-password", help="print the argon2 hash of a password (read from the terminal or stdin)"
    )
    hashing.set_defaults(handler=hash_password_command)
    token = actions.add_parser("new-token", help="print a new bearer token and the sha256 to configure")
    token.set_defaults(handler=new_token_command)


def hash_password_command(args: argparse.Namespace) -> int:
    """Read the password twice from the terminal (once from stdin when piped); print its hash."""
    from ribnode.console.auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("ribnode console: the two passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\n")
    try:
        print(hash_password(password))
    except ValueError as exc:
        print(f"ribnode console: {exc}", file=sys.stderr)
        return 2
    return 0


def new_token_command(args: argparse.Namespace) -> int:
    from ribnode.console.auth import new_token

    token, digest = new_token()
    print(f"token (give to the user, shown once): {token}")
    print(f"token_sha256 (put in console.users[]): {digest}")
    return 0
