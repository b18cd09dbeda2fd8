"""flask commands: pipeline load/dump, users create, demo."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from flask import Flask
from flask.cli import AppGroup, with_appcontext
from redis.exceptions import RedisError
from sqlalchemy import select

from . import accounts, configuration, current_alarms, get_session, pipeline_store, pipelines
from .config import PROJECT_ROOT
from .db import utcnow
from .models import Pipeline

DEFAULT_PIPELINE_FILE = PROJECT_ROOT / "pipelines" / "default.yaml"
DEMO_PASSWORD = "whatsdesk-demo"
DEMO_STAFF = [
    ("Ana Agent", "agent@whatsdesk.test", "agent", "+15550000001"),
    ("Bruno Agent", "agent2@whatsdesk.test", "agent", "+15550000002"),
    ("Sofia Supervisor", "supervisor@whatsdesk.test", "supervisor", "+15550000003"),
    # Changes the settings (pipelines, staff, replies) on /settings.
    ("Ada Admin", "admin@whatsdesk.test", "admin", "+15550000004"),
]

pipeline_cli = AppGroup("pipeline", help="Pipelines, stages and SLAs as YAML.")
users_cli = AppGroup("users", help="Staff accounts.")


def register(app: Flask) -> None:
    app.cli.add_command(pipeline_cli)
    app.cli.add_command(users_cli)
    app.cli.add_command(demo)


def load_file(path: Path, retime: bool = False) -> tuple[int, int]:
    """Load a pipeline file in one transaction: how many pipelines it held, and how many open
    stage visits were re-timed (with `retime`; their timers move in Redis after commit)."""
    desk = pipelines.parse(path.read_text(encoding="utf-8"))
    session = get_session()
    try:
        applied = configuration.apply(
            session, desk, None, "import", path.name, utcnow(), retime=retime, from_server=True
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    timers = applied.timers
    if timers:
        alarms = current_alarms()
        try:
            for visit_id, visit_timers in timers:
                alarms.schedule_timers(visit_id, visit_timers)
        except RedisError as exc:  # the database is right; the sweep re-arms within minutes
            click.echo(f"Could not move the timers in Redis now ({exc}); the sweep will.", err=True)
    return len(desk.pipelines), len(timers)


@pipeline_cli.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--retime",
    is_flag=True,
    help="Also re-time the cards now in these pipelines to the new SLAs "
    "(by default, SLA changes apply to stage visits that start afterwards).",
)
def pipeline_load(file: Path, retime: bool) -> None:
    """Create or update the pipelines in FILE (YAML). Nothing changes if it has a mistake."""
    try:
        count, retimed = load_file(file, retime)
    except pipelines.PipelineFileError as exc:
        click.echo(f"{file}: not loaded, the running configuration is unchanged:", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(1)
    click.echo(f"Loaded {count} pipeline(s) from {file}.")
    if retime:
        click.echo(f"Re-timed {retimed} open card(s) to the new SLAs.")


@pipeline_cli.command("dump")
def pipeline_dump() -> None:
    """Print every pipeline as YAML, in the form `pipeline load` reads."""
    click.echo(pipelines.dump(pipeline_store.dump(get_session())), nl=False)


@users_cli.command("create")
@click.option("--name", required=True)
@click.option("--email", required=True)
@click.option("--role", required=True, type=click.Choice(["agent", "supervisor", "admin"]))
@click.option(
    "--whatsapp", default=None, help="E.164 number that receives alerts, e.g. +14155550100"
)
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
def users_create(name: str, email: str, role: str, whatsapp: str | None, password: str) -> None:
    """Create a staff account."""
    session = get_session()
    try:
        user = accounts.create_user(
            session,
            name=name,
            email=email,
            role=role,
            whatsapp=whatsapp,
            password=password,
            now=utcnow(),
        )
        session.commit()
    except accounts.AccountError as exc:
        session.rollback()
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Created {user.role} {user.name} <{user.email}>.")


@users_cli.command("shift")
@click.argument("email")
@click.argument("calendar")
def users_shift(email: str, calendar: str) -> None:
    """Set when EMAIL works: CALENDAR is a calendar key from the pipeline file, or `any`.
    Reassignment to the least-loaded agent picks only people on shift."""
    session = get_session()
    try:
        user = accounts.set_shift(session, email, None if calendar == "any" else calendar)
        session.commit()
    except accounts.AccountError as exc:
        session.rollback()
        raise click.ClickException(str(exc)) from exc
    when = f"the hours of calendar {calendar!r}" if calendar != "any" else "any time"
    click.echo(f"{user.name} is on shift {when}.")


@click.command("demo")
@with_appcontext  # AppGroup commands get this themselves; a plain command does not
def demo() -> None:
    """Demo staff (if missing) and, on a desk with no pipeline yet, the default pipeline;
    prints the logins. A desk's own configuration (changed on /settings) is kept."""
    session = get_session()
    for name, email, role, phone in DEMO_STAFF:
        if accounts.find_by_email(session, email) is None:
            accounts.create_user(
                session,
                name=name,
                email=email,
                role=role,
                whatsapp=phone,
                password=DEMO_PASSWORD,
                now=utcnow(),
            )
    session.commit()
    if session.scalar(select(Pipeline.id).limit(1)) is None:
        load_file(DEFAULT_PIPELINE_FILE)
    else:
        click.echo("Pipelines are configured already: kept as they are (see /settings).")
    click.echo(f"Demo logins (password for all: {DEMO_PASSWORD}):")
    for name, email, role, phone in DEMO_STAFF:
        click.echo(f"  {role:<10} {email:<28} {name} (WhatsApp {phone})")
