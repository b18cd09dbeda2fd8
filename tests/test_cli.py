"""flask commands: users create, pipeline load/dump, demo — as an operator runs them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import Result
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from sqlalchemy import func, select
from werkzeug.security import check_password_hash

from whatsdesk import accounts, configuration, pipelines
from whatsdesk.alarms import TICK_AHEAD_SECONDS, Alarms
from whatsdesk.cli import DEFAULT_PIPELINE_FILE, DEMO_PASSWORD, DEMO_STAFF
from whatsdesk.config import Config
from whatsdesk.db import session_factory
from whatsdesk.models import Card, Pipeline, Stage, StageAlertRecipient, StageVisit, User

from conftest import PASSWORD, STAFF, inbound_form, now, signed_post

GOOD_FILE = """\
pipelines:
  - key: support
    name: Support
    default: true
    stages:
      - key: new
        name: New
        sla: 2m
        warning: 1m
        alert: [ana@example.com, bruno@example.com]
      - key: open
        name: In progress
        sla: 1h30m
        alert: [sofia@example.com]
      - key: waiting
        name: Waiting on customer
  - key: sales
    name: Sales
    stages:
      - key: lead
        name: Lead
        sla: 1d
"""


def run(app: Flask, *args: str, input: str | None = None) -> Result:
    return app.test_cli_runner().invoke(args=list(args), input=input)


def count(config: Config, model: type, *where: object) -> int:
    """Rows as they stand now, read in a fresh session."""
    with session_factory(config.database_url)() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where)) or 0


def user_named(config: Config, email: str) -> User | None:
    with session_factory(config.database_url)() as s:
        return s.scalars(select(User).where(User.email == email)).first()


def stored_yaml(app: Flask) -> str:
    result = run(app, "pipeline", "dump")
    assert result.exit_code == 0, result.output
    return result.stdout


def without_lines(specs: list[pipelines.PipelineSpec]) -> list[tuple[object, ...]]:
    """What a pipeline file says, without where it said it."""
    return [
        (
            p.key,
            p.name,
            p.default,
            [(s.key, s.name, s.sla_seconds, s.warning_seconds, sorted(s.alert)) for s in p.stages],
        )
        for p in specs
    ]


def write(tmp_path: Path, text: str, name: str = "pipelines.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def create_staff(config: Config) -> None:
    """The staff of conftest.STAFF, without any pipeline."""
    with session_factory(config.database_url)() as s:
        for name, email, role, phone in STAFF:
            accounts.create_user(
                s, name=name, email=email, role=role, whatsapp=phone, password=PASSWORD, now=now()
            )
        s.commit()


def customer_writes(client: FlaskClient, config: Config) -> None:
    answer = signed_post(client, config, "/twilio/whatsapp", inbound_form())
    assert answer.status_code == 200, answer.get_data(as_text=True)


# --- users create -------------------------------------------------------------------------------

NEW_USER = {
    "--name": "Zoe Zed",
    "--email": "Zoe@Example.com",
    "--role": "supervisor",
    "--whatsapp": "+14155550100",
    "--password": "long-enough-secret",
}


def users_create(app: Flask, **changes: str) -> Result:
    options = {**NEW_USER, **{f"--{k}": v for k, v in changes.items()}}
    return run(app, "users", "create", *[part for pair in options.items() for part in pair])


def test_users_create_makes_an_account_with_a_hashed_password(app: Flask, config: Config) -> None:
    result = users_create(app)

    assert result.exit_code == 0, result.output
    assert result.output == "Created supervisor Zoe Zed <zoe@example.com>.\n"
    user = user_named(config, "zoe@example.com")
    assert user is not None
    assert (user.name, user.role, user.active) == ("Zoe Zed", "supervisor", True)
    assert user.whatsapp == "whatsapp:+14155550100"
    assert "long-enough-secret" not in user.password_hash
    assert check_password_hash(user.password_hash, "long-enough-secret")
    with session_factory(config.database_url)() as s:
        assert accounts.authenticate(s, "ZOE@example.com", "long-enough-secret") is not None
        assert accounts.authenticate(s, "zoe@example.com", "wrong-password") is None


def test_users_create_asks_for_the_password_twice_without_echo(app: Flask, config: Config) -> None:
    result = run(
        app,
        "users",
        "create",
        "--name",
        "Zoe Zed",
        "--email",
        "zoe@example.com",
        "--role",
        "agent",
        input="typed-secret-1\ntyped-secret-1\n",
    )

    assert result.exit_code == 0, result.output
    assert "typed-secret-1" not in result.output
    user = user_named(config, "zoe@example.com")
    assert user is not None and user.whatsapp is None
    assert check_password_hash(user.password_hash, "typed-secret-1")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"email": "not-an-email"}, "Error: 'not-an-email' is not an email address"),
        ({"email": "two@@example.com"}, "is not an email address"),
        ({"role": "boss"}, "Invalid value for '--role': 'boss' is not one of"),
        ({"whatsapp": "14155550100"}, "WhatsApp number '14155550100' is not in E.164 form"),
        ({"whatsapp": "+1 415 555 0100"}, "is not in E.164 form, e.g. +14155550100"),
        ({"whatsapp": "+0123456789"}, "is not in E.164 form"),
        ({"password": "short"}, "Error: password must have at least 8 characters"),
        ({"name": "   "}, "Error: name must not be empty"),
    ],
)
def test_users_create_refuses_bad_input_and_adds_nobody(
    app: Flask, config: Config, changes: dict[str, str], message: str
) -> None:
    result = users_create(app, **changes)

    assert result.exit_code != 0
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert count(config, User) == 0


def test_users_create_refuses_a_duplicate_email(app: Flask, seeded: Config) -> None:
    before = count(seeded, User)

    result = users_create(app, email="ANA@example.com", whatsapp="+14155550199")

    assert result.exit_code == 1
    assert "Error: an account with email ana@example.com already exists" in result.stderr
    assert count(seeded, User) == before
    assert count(seeded, User, User.name == "Zoe Zed") == 0


def test_users_create_refuses_a_whatsapp_number_already_in_use(app: Flask, seeded: Config) -> None:
    before = count(seeded, User)

    result = users_create(app, whatsapp=STAFF[0][3])

    assert result.exit_code == 1
    assert f"another account already uses WhatsApp whatsapp:{STAFF[0][3]}" in result.stderr
    assert count(seeded, User) == before


# --- pipeline load / dump -----------------------------------------------------------------------


def test_pipeline_load_then_dump_prints_the_same_pipelines(
    app: Flask, config: Config, tmp_path: Path
) -> None:
    create_staff(config)
    path = write(tmp_path, GOOD_FILE)

    result = run(app, "pipeline", "load", str(path))

    assert result.exit_code == 0, result.output
    assert result.stdout == f"Loaded 2 pipeline(s) from {path}.\n"
    dumped = stored_yaml(app)
    assert without_lines(pipelines.parse(dumped).pipelines) == without_lines(
        pipelines.parse(GOOD_FILE).pipelines
    )
    assert count(config, Pipeline) == 2
    assert count(config, Stage) == 4


def test_pipeline_dump_output_loads_back_unchanged(
    app: Flask, seeded: Config, tmp_path: Path
) -> None:
    first = stored_yaml(app)

    result = run(app, "pipeline", "load", str(write(tmp_path, first)))

    assert result.exit_code == 0, result.output
    assert stored_yaml(app) == first


def test_pipeline_load_updates_stages_in_place(
    app: Flask, client: FlaskClient, seeded: Config, tmp_path: Path
) -> None:
    customer_writes(client, seeded)
    changed = GOOD_FILE.replace("name: New", "name: Brand new").replace("sla: 2m", "sla: 5m")

    result = run(app, "pipeline", "load", str(write(tmp_path, changed)))

    assert result.exit_code == 0, result.output
    with session_factory(seeded.database_url)() as s:
        card = s.scalars(select(Card)).one()
        assert (card.stage.key, card.stage.name, card.stage.sla_seconds) == (
            "new",
            "Brand new",
            300,
        )
        assert [st.key for st in card.pipeline.stages] == ["new", "open", "waiting"]


def test_pipeline_load_with_a_mistake_changes_nothing(
    app: Flask, seeded: Config, tmp_path: Path
) -> None:
    before = stored_yaml(app)
    broken = GOOD_FILE.replace("name: Support", "name: Renamed").replace("sla: 1d", "sla: 1 day")
    path = write(tmp_path, broken)

    result = run(app, "pipeline", "load", str(path))

    assert result.exit_code == 1
    assert f"{path}: not loaded, the running configuration is unchanged:" in result.stderr
    assert (
        "  line 22: pipelines[1].stages[0].sla: '1 day' is not a duration such as 90s, 15m, 2h "
        "or 1h30m" in result.stderr
    )
    assert result.stdout == ""
    assert stored_yaml(app) == before
    assert count(seeded, Pipeline, Pipeline.key == "sales") == 0


def test_pipeline_load_of_an_empty_file_changes_nothing(
    app: Flask, seeded: Config, tmp_path: Path
) -> None:
    before = stored_yaml(app)

    result = run(app, "pipeline", "load", str(write(tmp_path, "")))

    assert result.exit_code == 1
    assert "line 1: file: the file is empty" in result.stderr
    assert stored_yaml(app) == before


def test_pipeline_load_of_a_missing_file_is_refused(app: Flask, tmp_path: Path) -> None:
    result = run(app, "pipeline", "load", str(tmp_path / "nope.yaml"))

    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_pipeline_load_refuses_an_alert_email_without_a_staff_account(
    app: Flask, seeded: Config, tmp_path: Path
) -> None:
    before = stored_yaml(app)
    unknown = GOOD_FILE.replace("alert: [sofia@example.com]", "alert: [Ghost@Example.com]")

    result = run(app, "pipeline", "load", str(write(tmp_path, unknown)))

    assert result.exit_code == 1
    assert "line 11: stage 'open'.alert: no staff account ghost@example.com" in result.stderr
    assert "users create" in result.stderr
    assert stored_yaml(app) == before
    assert count(seeded, Pipeline) == 1


def test_pipeline_load_refuses_removing_a_stage_that_has_cards(
    app: Flask, client: FlaskClient, seeded: Config, tmp_path: Path
) -> None:
    customer_writes(client, seeded)  # opens a card in the first stage, "new"
    before = stored_yaml(app)
    without_new = GOOD_FILE.replace(
        """      - key: new
        name: New
        sla: 2m
        warning: 1m
        alert: [ana@example.com, bruno@example.com]
""",
        "",
    )
    assert "key: new" not in without_new

    result = run(app, "pipeline", "load", str(write(tmp_path, without_new)))

    assert result.exit_code == 1
    assert (
        "line 2: pipeline 'support'.stages: stage 'new' is missing from the file but has cards"
        in result.stderr
    )
    assert stored_yaml(app) == before
    assert count(seeded, Stage, Stage.key == "new") == 1
    assert count(seeded, Card) == 1


def test_pipeline_load_deletes_a_removed_stage_without_history(
    app: Flask, seeded: Config, tmp_path: Path
) -> None:
    with session_factory(seeded.database_url)() as s:
        new_id = s.scalars(select(Stage.id).where(Stage.key == "new")).one()
    assert count(seeded, StageAlertRecipient, StageAlertRecipient.stage_id == new_id) == 2
    only_later = """\
pipelines:
  - key: support
    name: Support
    default: true
    stages:
      - key: open
        name: In progress
        sla: 1h
      - key: waiting
        name: Waiting on customer
"""

    result = run(app, "pipeline", "load", str(write(tmp_path, only_later)))

    assert result.exit_code == 0, result.output
    assert without_lines(pipelines.parse(stored_yaml(app)).pipelines) == without_lines(
        pipelines.parse(only_later).pipelines
    )
    assert count(seeded, Stage, Stage.key == "new") == 0
    assert count(seeded, StageAlertRecipient, StageAlertRecipient.stage_id == new_id) == 0


def test_pipeline_load_keeps_one_default(app: Flask, seeded: Config, tmp_path: Path) -> None:
    other = """\
pipelines:
  - key: vip
    name: VIP
    default: true
    stages: [{key: first, name: First}]
"""

    result = run(app, "pipeline", "load", str(write(tmp_path, other)))

    assert result.exit_code == 0, result.output
    dumped = {p.key: p.default for p in pipelines.parse(stored_yaml(app)).pipelines}
    assert dumped == {"support": False, "vip": True}


# --- demo ---------------------------------------------------------------------------------------


def test_demo_creates_staff_and_the_default_pipeline_and_prints_logins(
    app: Flask, config: Config
) -> None:
    result = run(app, "demo")

    assert result.exit_code == 0, result.output
    assert f"password for all: {DEMO_PASSWORD}" in result.stdout
    with session_factory(config.database_url)() as s:
        for name, email, role, phone in DEMO_STAFF:
            assert email in result.stdout and name in result.stdout
            user = accounts.authenticate(s, email, DEMO_PASSWORD)
            assert user is not None, email
            assert (user.name, user.role, user.whatsapp) == (name, role, f"whatsapp:{phone}")
    assert count(config, User) == len(DEMO_STAFF)
    expected = pipelines.parse(DEFAULT_PIPELINE_FILE.read_text(encoding="utf-8")).pipelines
    assert without_lines(pipelines.parse(stored_yaml(app)).pipelines) == without_lines(expected)
    assert [p.key for p in expected if p.default] == ["support"]


def test_demo_twice_is_harmless(app: Flask, client: FlaskClient, config: Config) -> None:
    assert run(app, "demo").exit_code == 0
    customer_writes(client, config)  # the demo pipeline now has history
    first = stored_yaml(app)

    again = run(app, "demo")

    assert again.exit_code == 0, again.output
    assert "agent@whatsdesk.test" in again.stdout
    assert stored_yaml(app) == first
    assert count(config, User) == len(DEMO_STAFF)
    assert count(config, Pipeline) == 1
    assert count(config, Card) == 1


def test_demo_again_keeps_the_configuration_changed_since(app: Flask, config: Config) -> None:
    """`make run` runs demo at every start: what an admin changed on /settings stays."""
    assert run(app, "demo").exit_code == 0
    changed = pipelines.parse(stored_yaml(app))
    changed.pipelines[0].stages[0].sla_seconds = 45 * 60
    with session_factory(config.database_url)() as s:
        configuration.apply(s, changed, None, "stage", "support/new", now())
        s.commit()
    edited = stored_yaml(app)

    again = run(app, "demo")

    assert again.exit_code == 0, again.output
    assert "Pipelines are configured already: kept as they are" in again.stdout
    assert stored_yaml(app) == edited


def test_demo_keeps_an_existing_demo_password(app: Flask, config: Config) -> None:
    seed_free = session_factory(config.database_url)
    with seed_free() as s:
        accounts.create_user(
            s,
            name="Ana Agent",
            email="agent@whatsdesk.test",
            role="agent",
            whatsapp="+15550000001",
            password="my-own-password",
            now=now(),
        )
        s.commit()

    result = run(app, "demo")

    assert result.exit_code == 0, result.output
    with seed_free() as s:
        assert accounts.authenticate(s, "agent@whatsdesk.test", "my-own-password") is not None
        assert accounts.authenticate(s, "agent@whatsdesk.test", DEMO_PASSWORD) is None
    assert count(config, User) == len(DEMO_STAFF)


def test_pipeline_load_retime_moves_open_cards_to_the_new_sla_and_their_timers(
    app: Flask, seeded: Config, client: FlaskClient, tmp_path: Path, redis: Redis
) -> None:
    assert signed_post(client, seeded, "/twilio/whatsapp", inbound_form()).status_code == 200
    with session_factory(seeded.database_url)() as s:
        visit = s.scalars(select(StageVisit)).one()
    shorter = tmp_path / "shorter.yaml"
    shorter.write_text(GOOD_FILE.replace("sla: 2m", "sla: 10m"), encoding="utf-8")

    result = run(app, "pipeline", "load", "--retime", str(shorter))

    assert result.exit_code == 0, result.output
    assert "Re-timed 1 open card(s) to the new SLAs." in result.output
    with session_factory(seeded.database_url)() as s:
        retimed = s.get(StageVisit, visit.id)
        assert retimed is not None and retimed.deadline_at is not None
        assert retimed.deadline_at == visit.entered_at + timedelta(minutes=10)
    wakes = Alarms(seeded.redis_url, seeded.queue_name).wakes_for(retimed.deadline_at)
    ahead = timedelta(seconds=TICK_AHEAD_SECONDS)
    assert wakes == retimed.deadline_at.replace(microsecond=0) - ahead


def test_pipeline_load_without_retime_leaves_open_cards_on_their_sla(
    app: Flask, seeded: Config, client: FlaskClient, tmp_path: Path
) -> None:
    assert signed_post(client, seeded, "/twilio/whatsapp", inbound_form()).status_code == 200
    longer = tmp_path / "longer.yaml"
    longer.write_text(GOOD_FILE.replace("sla: 2m", "sla: 10m"), encoding="utf-8")

    result = run(app, "pipeline", "load", str(longer))

    assert result.exit_code == 0, result.output
    assert "Re-timed" not in result.output
    with session_factory(seeded.database_url)() as s:
        visit = s.scalars(select(StageVisit)).one()
        assert visit.deadline_at == visit.entered_at + timedelta(minutes=2)


SHIFT_CALENDAR = """\
calendars:
  - key: mornings
    timezone: Europe/Lisbon
    hours: {mon-fri: ["08:00-14:00"]}
"""


def test_users_shift_sets_and_clears_when_someone_works(
    app: Flask, seeded: Config, tmp_path: Path
) -> None:
    config_file = tmp_path / "with-calendar.yaml"
    config_file.write_text(SHIFT_CALENDAR + GOOD_FILE, encoding="utf-8")
    assert run(app, "pipeline", "load", str(config_file)).exit_code == 0

    result = run(app, "users", "shift", "ana@example.com", "mornings")
    assert result.exit_code == 0, result.output
    assert "Ana Agent is on shift the hours of calendar 'mornings'." in result.output
    with session_factory(seeded.database_url)() as s:
        ana = s.scalars(select(User).where(User.email == "ana@example.com")).one()
        assert ana.shift_calendar is not None and ana.shift_calendar.key == "mornings"

    assert run(app, "users", "shift", "ana@example.com", "any").exit_code == 0
    assert user_named(seeded, "ana@example.com").shift_calendar_id is None  # type: ignore[union-attr]


def test_users_shift_refuses_an_unknown_calendar_or_person(app: Flask, seeded: Config) -> None:
    unknown_calendar = run(app, "users", "shift", "ana@example.com", "nights")
    unknown_person = run(app, "users", "shift", "ghost@example.com", "any")

    assert unknown_calendar.exit_code != 0
    assert "no calendar 'nights'" in unknown_calendar.output
    assert unknown_person.exit_code != 0
    assert "no account with email ghost@example.com" in unknown_person.output
