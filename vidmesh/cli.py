"""The `vidmesh` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import runpy
import sys
from pathlib import Path

import msgspec

SERVICES = ("gateway", "scheduler", "transcoder", "storage", "statistics", "notifier")
SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidmesh",
        description="Distributed video transcoding on NATS JetStream. Configuration comes from "
        "the environment (VIDMESH_*; see README.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run nats-server and every service on this machine")
    up.add_argument("--port", type=int, help="gateway port (default 3000; VIDMESH_PORT)")
    up.add_argument("--data-dir", help="folder for NATS data and outputs (VIDMESH_DATA_DIR)")
    up.add_argument("--jellyfin-url", help="Jellyfin server that vouches for tokens (JELLYFIN_URL)")
    for name in SERVICES:
        sub.add_parser(name, help=f"run the {name} service against VIDMESH_NATS_URL")
    for verb, what in (
        ("backup", "snapshot every JetStream stream and bucket of VIDMESH_NAMESPACE into DIR"),
        ("restore", "give JetStream a backup back (the namespace must have no streams yet)"),
    ):
        command = sub.add_parser(verb, help=what)
        command.add_argument("dir", type=Path, help="the backup's folder")
        if verb == "restore":
            command.add_argument(
                "--replace",
                action="store_true",
                help="delete the namespace's streams first (stop every service before)",
            )
    schemas = sub.add_parser("schemas", help="generate or check schemas/ from the message types")
    mode = schemas.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the files (default)")
    mode.add_argument("--check", action="store_true", help="exit 1 if the files are stale")
    schemas.add_argument("--dir", type=Path, default=SCHEMAS_DIR)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "up":
        _up(args)
    elif args.command in SERVICES:
        runpy.run_module(f"services.{args.command}", run_name="__main__", alter_sys=True)
    elif args.command == "schemas":
        _schemas(args)
    elif args.command in ("backup", "restore"):
        replace = getattr(args, "replace", False)
        sys.exit(asyncio.run(_backup_or_restore(args.command, args.dir, replace=replace)))


def _up(args: argparse.Namespace) -> None:
    from services.gateway import GatewaySettings
    from services.notifier import NotifierSettings
    from services.scheduler import SchedulerSettings
    from services.statistics import StatisticsSettings
    from services.storage import StorageSettings
    from services.transcoder import TranscoderSettings
    from shared import config
    from shared import logging as vlog
    from vidmesh.supervisor import UpSettings, up

    if args.port is not None:
        os.environ["VIDMESH_PORT"] = str(args.port)
    if args.data_dir:
        os.environ["VIDMESH_DATA_DIR"] = args.data_dir
    if args.jellyfin_url:
        os.environ["JELLYFIN_URL"] = args.jellyfin_url
    classes: list[type[msgspec.Struct]] = [
        UpSettings,
        GatewaySettings,
        SchedulerSettings,
        TranscoderSettings,
        StorageSettings,
        StatisticsSettings,
        NotifierSettings,
    ]
    unknown = config.unknown_variables(classes, os.environ)
    if unknown:
        raise SystemExit(f"vidmesh up: unknown setting(s) {', '.join(unknown)} (see README.md)")
    for cls in classes:
        config.load(cls)  # every service's settings must be valid before anything starts
    settings = config.load(UpSettings)
    vlog.configure(settings.log_level, settings.log_format, service="up")
    try:
        code = asyncio.run(up(settings, dict(os.environ)))
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


async def _backup_or_restore(verb: str, folder: Path, *, replace: bool) -> int:
    import nats.errors

    from shared.config import CommonSettings, load
    from shared.nats.client import connect_with
    from shared.nats.subjects import Names
    from vidmesh import backup

    settings = load(CommonSettings)
    names = Names(settings.namespace)
    try:
        nc = await connect_with(settings, f"vidmesh-{verb}")
    except (OSError, nats.errors.Error) as exc:
        print(
            f"vidmesh {verb}: NATS at {settings.nats_url} is not reachable: {exc!r}",
            file=sys.stderr,
        )
        return 1
    try:
        if verb == "backup":
            copies = await backup.backup(nc, names, folder)
        else:
            copies = await backup.restore(nc, names, folder, replace=replace)
    except (backup.BackupError, OSError, TimeoutError, nats.errors.Error) as exc:
        print(f"vidmesh {verb}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        await nc.close()
    size = sum(c.size for c in copies) / 2**20
    done = "backed up" if verb == "backup" else "restored"
    print(
        f"{done} {len(copies)} streams ({size:.1f} MiB) of namespace {names.namespace!r}: {folder}"
    )
    return 0


def _schemas(args: argparse.Namespace) -> None:
    from services.gateway import app, openapi  # noqa: F401  (app registers every route)
    from vidmesh import schemas

    schemas.EXTRA.update(openapi.FILES)  # every face's OpenAPI document
    if args.check:
        stale = schemas.drift(args.dir)
        if stale:
            print(f"stale: {', '.join(stale)}; run `vidmesh schemas --write`", file=sys.stderr)
            sys.exit(1)
        print("schemas are current")
        return
    changed = schemas.write(args.dir)
    print(f"wrote {', '.join(changed)}" if changed else "schemas are current")


if __name__ == "__main__":
    main()
