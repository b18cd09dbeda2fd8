"""Escalation levels after the breach: when they come, who hears, and their configuration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from redis import Redis
from rq import Queue
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select
from sqlalchemy.orm import Session

from whatsdesk import (
    accounts,
    configuration,
    desk,
    jobs,
    pipeline_store,
    pipelines,
    reports,
    sla,
    whatsapp,
)
from whatsdesk.alarms import clock_queue_name, second_of, tick_job_id
from whatsdesk.config import Config
from whatsdesk.models import Card, Message, SlaEvent, StageEscalation, StageVisit, User

from conftest import PASSWORD, STAFF, inbound_form

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
CONFIG = """
pipelines:
  - key: support
    name: Support
    default: true
    stages:
      - key: new
        name: New
        sla: 10m
        warning: 2m
        alert: [ana@example.com]
        escalate:
          - after: 5m
            to: [bruno@example.com]
          - after: 20m
            to: [otto@example.com, bruno@example.com]
"""


@pytest.fixture
def escalating(config: Config, session: Session) -> Config:
    for name, email, role, phone in STAFF:
        accounts.create_user(
            session, name=name, email=email, role=role, whatsapp=phone, password=PASSWORD, now=T0
        )
    pipeline_store.load(session, pipelines.parse(CONFIG), T0)
    session.commit()
    return config


def open_visit(session: Session) -> StageVisit:
    received = desk.receive_message(session, whatsapp.parse_inbound(inbound_form(name="Maria")), T0)
    session.commit()
    assert received.new_visit is not None
    return received.new_visit


def told(session: Session, kind: str) -> list[str]:
    session.expire_all()
    return sorted(
        session.scalars(
            select(Message.to_address)
            .join(SlaEvent, SlaEvent.id == Message.sla_event_id)
            .where(SlaEvent.kind == kind)
        )
    )


def test_levels_come_after_the_breach_in_order(escalating: Config, session: Session) -> None:
    visit = open_visit(session)
    breach = T0 + timedelta(minutes=10)

    assert visit.timers.kinds() == ["warning", "breach", "level-1", "level-2"]
    assert visit.timers.levels == (breach + timedelta(minutes=5), breach + timedelta(minutes=20))
    assert visit.next_due_at == T0 + timedelta(minutes=8)


def test_each_level_tells_its_named_people_once(escalating: Config, session: Session) -> None:
    visit = open_visit(session)
    breach = T0 + timedelta(minutes=10)

    jobs.reconcile(escalating, breach)
    jobs.reconcile(escalating, breach + timedelta(minutes=5))
    jobs.reconcile(escalating, breach + timedelta(minutes=20))
    jobs.reconcile(escalating, breach + timedelta(minutes=21))  # nothing twice

    assert told(session, "breach") == ["whatsapp:+15550000003", "whatsapp:+15550000004"]
    assert told(session, "level-1") == ["whatsapp:+15550000002"]
    assert told(session, "level-2") == ["whatsapp:+15550000002", "whatsapp:+15550000004"]
    text = session.scalars(
        select(Message.body).join(SlaEvent).where(SlaEvent.kind == "level-1")
    ).one()
    assert text.startswith("🔺 Escalation level 1 — Maria")
    assert "breached 5m 00s ago" in text
    session.expire_all()
    assert session.get(StageVisit, visit.id).next_due_at is None  # type: ignore[union-attr]


# New times out 12 minutes after entry, between its breach (10m) and its level 1 (15m).
TIMING_OUT = (
    CONFIG
    + """\
        timeout: {after: 12m, then: open}
      - key: open
        name: Open
        sla: 1h
"""
)


def test_a_timeout_fired_late_moves_the_card_at_its_instant_and_takes_no_later_level(
    escalating: Config, session: Session
) -> None:
    """Entered at 12:00, timing out at 12:12; nothing ran until 12:20. Level 1 (12:15)
    would have come after the card left New: it is not sent, and Open's clock started at
    12:12."""
    pipeline_store.load(session, pipelines.parse(TIMING_OUT), T0)
    session.commit()
    visit = open_visit(session)

    jobs.reconcile(escalating, T0 + timedelta(minutes=20))

    session.expire_all()
    kinds = session.scalars(select(SlaEvent.kind).where(SlaEvent.visit_id == visit.id)).all()
    assert sorted(kinds) == ["breach", "timeout"]
    assert told(session, "level-1") == []
    left = session.get_one(StageVisit, visit.id)
    card = session.get_one(Card, visit.card_id)
    current = desk.current_visit(session, card)
    assert current is not None and current.stage.key == "open"
    assert (left.left_at, current.entered_at) == (T0 + timedelta(minutes=12),) * 2
    assert current.deadline_at == T0 + timedelta(minutes=72)


def test_each_alert_offers_the_commands_its_reader_may_use(
    escalating: Config, session: Session
) -> None:
    visit = open_visit(session)
    jobs.reconcile(escalating, T0 + timedelta(minutes=30))  # breach, level 1, level 2

    session.expire_all()
    endings = {
        (kind, to): body.splitlines()[-1]
        for kind, to, body in session.execute(
            select(SlaEvent.kind, Message.to_address, Message.body).join(SlaEvent)
        )
    }
    card = visit.card_id
    supervisor = f"Reply TAKE, ACK, SNOOZE 30 or ASSIGN <name> (card #{card})."
    agent = f"Reply TAKE to make it yours (card #{card})."
    assert endings[("level-2", "whatsapp:+15550000004")] == supervisor  # Otto
    assert endings[("level-2", "whatsapp:+15550000002")] == agent  # Bruno
    assert endings[("level-1", "whatsapp:+15550000002")] == agent


@pytest.mark.parametrize(
    ("owner", "ending"),
    [
        ("ana@example.com", "Ana Agent has it (card #{card})."),
        ("bruno@example.com", "It is yours: answer the customer on the desk (card #{card})."),
    ],
)
def test_an_agent_told_of_a_card_someone_has_is_not_offered_take(
    escalating: Config, session: Session, owner: str, ending: str
) -> None:
    visit = open_visit(session)
    card = session.get_one(Card, visit.card_id)
    card.owner = session.scalars(select(User).where(User.email == owner)).one()
    session.commit()

    jobs.reconcile(escalating, T0 + timedelta(minutes=16))  # breach, level 1 (Bruno)

    [body] = session.scalars(
        select(Message.body)
        .join(SlaEvent)
        .where(SlaEvent.kind == "level-1", Message.to_address == "whatsapp:+15550000002")
    ).all()
    assert body.splitlines()[-1] == ending.format(card=card.id)


def test_the_sweep_puts_a_levels_clock_job_back_once_it_rings_within_the_lookahead(
    escalating: Config, session: Session, redis: Redis
) -> None:
    """Redis lost the clock's jobs (nothing was ever armed here): the sweep gives each level
    ringing within its look-ahead its second's job back, and leaves later ones for later."""
    visit = open_visit(session)
    level_1, level_2 = visit.timers.levels

    jobs.reconcile(escalating, level_1 - timedelta(minutes=1))

    clock = Queue(clock_queue_name(escalating.queue_name), connection=redis)
    armed = set(ScheduledJobRegistry(queue=clock).get_job_ids())
    assert tick_job_id(second_of(level_1)) in armed
    assert tick_job_id(second_of(level_2)) not in armed  # 16 minutes ahead


def test_a_sweep_long_after_fires_the_breach_and_every_level_but_not_the_warning(
    escalating: Config, session: Session
) -> None:
    open_visit(session)

    jobs.reconcile(escalating, T0 + timedelta(hours=2))

    kinds = sorted(session.scalars(select(SlaEvent.kind)))
    assert kinds == ["breach", "level-1", "level-2"]


def test_a_level_whose_people_cannot_be_reached_tells_the_supervisors(
    escalating: Config, session: Session
) -> None:
    visit = open_visit(session)
    bruno = accounts.find_by_email(session, "bruno@example.com")
    assert bruno is not None
    bruno.active = False
    session.commit()

    jobs.fire_and_send(escalating, visit.id, "level-1", T0 + timedelta(minutes=15))

    assert told(session, "level-1") == ["whatsapp:+15550000003", "whatsapp:+15550000004"]


def test_reloading_with_fewer_levels_keeps_the_stage_and_drops_the_rest(
    escalating: Config, session: Session
) -> None:
    shorter = CONFIG.split("          - after: 20m")[0]
    pipeline_store.load(session, pipelines.parse(shorter), T0)
    session.commit()

    levels = session.scalars(select(StageEscalation)).all()
    assert [(e.level, e.after_seconds, [u.email for u in e.users]) for e in levels] == [
        (1, 300, ["bruno@example.com"])
    ]
    dumped = pipelines.parse(pipelines.dump(pipeline_store.dump(session)))
    [level] = dumped.pipelines[0].stages[0].escalate
    assert (level.after_seconds, level.to) == (300, ["bruno@example.com"])


def load_file(session: Session, text: str, at: datetime, retime: bool = False) -> None:
    """What `flask pipeline load [--retime]` does with a file at `at`."""
    configuration.apply(session, pipelines.parse(text), None, "import", "file", at, retime=retime)


WITHOUT_FIRST_LEVEL = CONFIG.replace(
    "          - after: 5m\n            to: [bruno@example.com]\n", ""
)


@pytest.mark.parametrize("retime", [False, True], ids=["kept timers", "re-timed"])
def test_removing_a_fired_level_leaves_the_next_one_owed_to_its_own_people(
    escalating: Config, session: Session, retime: bool
) -> None:
    """Level 1 (Bruno, 5 min) has fired; an admin removes it. The old level 2 (Otto and
    Bruno, 20 min) is level 1 now: it still comes at its time, to its people — not taken
    for done because a level 1 was recorded, nor sent as a "level 2" nobody is named for."""
    visit = open_visit(session)
    breach = T0 + timedelta(minutes=10)
    jobs.reconcile(escalating, breach + timedelta(minutes=5))
    fired = session.scalars(select(SlaEvent).where(SlaEvent.kind == "level-1")).one()

    load_file(session, WITHOUT_FIRST_LEVEL, breach + timedelta(minutes=6), retime=retime)
    session.commit()
    session.expire_all()
    assert session.get_one(StageVisit, visit.id).timers.levels == (breach + timedelta(minutes=20),)
    jobs.reconcile(escalating, breach + timedelta(minutes=20))

    assert told(session, "level-1") == ["whatsapp:+15550000002", "whatsapp:+15550000004"]
    assert told(session, f"level-1-gone-{fired.id}") == ["whatsapp:+15550000002"]  # as before
    session.expire_all()
    assert session.get_one(StageVisit, visit.id).next_due_at is None
    assert sla.level_reached(f"level-1-gone-{fired.id}") == 1  # the reports still count it
    assert sla.event_label(f"level-1-gone-{fired.id}") == "level-1 (a level removed since)"


def test_a_visit_at_a_removed_level_and_at_the_level_now_so_numbered_counts_once_in_reports(
    escalating: Config, session: Session
) -> None:
    """Level 1 fired; an admin removes it, and the old level 2, level 1 now, fires too. The
    reports count the visits that reached each level: this one once at level 1."""
    open_visit(session)
    breach = T0 + timedelta(minutes=10)
    jobs.reconcile(escalating, breach + timedelta(minutes=5))
    load_file(session, WITHOUT_FIRST_LEVEL, breach + timedelta(minutes=6))
    session.commit()
    jobs.reconcile(escalating, breach + timedelta(minutes=20))
    session.expire_all()
    fired = session.scalars(select(SlaEvent.kind).where(SlaEvent.kind.like("level-%"))).all()
    assert sorted(map(sla.level_reached, fired)) == [1, 1]  # two events at level 1

    report = reports.build(session, reports.Period("custom", T0.date(), T0.date(), "UTC"))

    [stage] = [s for s in report.stages if s.stage.key == "new"]
    assert stage.levels == {1: 1}


def test_a_level_inserted_before_a_fired_one_is_owed_and_the_fired_one_keeps_its_identity(
    escalating: Config, session: Session
) -> None:
    """Level 1 (Bruno, 5 min) has fired; an admin puts a new level 1 (Sofia, 3 min) before
    it. The fired level is level 2 now and is not sent again; the new one, already past
    its time, is owed and goes to Sofia at the next sweep; the old level 2 is level 3."""
    visit = open_visit(session)
    breach = T0 + timedelta(minutes=10)
    jobs.reconcile(escalating, breach + timedelta(minutes=5))
    earlier = CONFIG.replace(
        "        escalate:\n",
        "        escalate:\n          - after: 3m\n            to: [sofia@example.com]\n",
    )

    load_file(session, earlier, breach + timedelta(minutes=6))
    session.commit()
    jobs.reconcile(escalating, breach + timedelta(minutes=6))
    jobs.reconcile(escalating, breach + timedelta(minutes=20))

    assert told(session, "level-1") == ["whatsapp:+15550000003"]  # Sofia, once
    assert told(session, "level-2") == ["whatsapp:+15550000002"]  # Bruno, before the change
    assert told(session, "level-3") == ["whatsapp:+15550000002", "whatsapp:+15550000004"]
    session.expire_all()
    assert session.get_one(StageVisit, visit.id).next_due_at is None


def test_levels_keep_their_identity_by_place_people_and_delay() -> None:
    """As many levels as before: each keeps its place, whatever its new delay or people
    (doubling every delay must not take level 2 for a new one and send it again). Fewer
    or more: the ones removed or inserted are those that leave the rest most alike."""
    level = pipelines.EscalationSpec
    five, ten, twenty = level(300, ["b"]), level(600, ["s"]), level(1200, ["o"])
    doubled = [level(600, ["b"]), level(1200, ["s"]), level(2400, ["o"])]
    assert pipelines.match_levels([five, ten, twenty], doubled) == {}
    assert pipelines.match_levels([five, twenty], [twenty, five]) == {}  # by place
    assert pipelines.match_levels([five, twenty], [five, twenty, ten]) == {1: 1, 2: 2}  # added
    assert pipelines.match_levels([five, ten, twenty], [five, twenty]) == {1: 1, 2: None, 3: 2}
    assert pipelines.match_levels([five, twenty], [twenty]) == {1: None, 2: 1}
    assert pipelines.match_levels([five, twenty], [level(180, ["x"]), five, twenty]) == {
        1: 2,
        2: 3,
    }
    assert pipelines.match_levels([five, twenty], [level(9, ["x"])]) == {1: 1, 2: None}


def test_a_level_added_at_the_end_reaches_the_cards_escalating_now(
    escalating: Config, session: Session
) -> None:
    """The stage page adds levels at the end: a card already past its breach gets the new
    level 3 (Sofia, 30 min after its own deadline) as well."""
    visit = open_visit(session)
    breach = T0 + timedelta(minutes=10)
    jobs.reconcile(escalating, breach + timedelta(minutes=5))
    longer = CONFIG + "          - after: 30m\n            to: [sofia@example.com]\n"

    load_file(session, longer, breach + timedelta(minutes=6))
    session.commit()
    jobs.reconcile(escalating, breach + timedelta(minutes=30))

    assert told(session, "level-1") == ["whatsapp:+15550000002"]  # once
    assert told(session, "level-3") == ["whatsapp:+15550000003"]
    session.expire_all()
    assert session.get_one(StageVisit, visit.id).timers.levels[-1] == breach + timedelta(minutes=30)


def test_a_card_gone_on_still_owing_a_level_is_owed_it_under_its_new_number(
    escalating: Config, session: Session
) -> None:
    """Level 2 came due and the card was resolved a moment later, before the clock recorded
    it (it is still owed); then level 1 is removed. The old level 2 goes, as level 1, to
    its own people — not as "level 2" to whoever that number names now."""
    visit = open_visit(session)
    breach = T0 + timedelta(minutes=10)
    jobs.reconcile(escalating, breach + timedelta(minutes=5))
    desk.resolve(session, visit.card_id, breach + timedelta(minutes=20, seconds=1))
    session.commit()
    load_file(session, WITHOUT_FIRST_LEVEL, breach + timedelta(minutes=20, seconds=2))
    session.commit()

    jobs.reconcile(escalating, breach + timedelta(minutes=21))

    assert told(session, "level-1") == ["whatsapp:+15550000002", "whatsapp:+15550000004"]
    session.expire_all()
    assert session.get_one(StageVisit, visit.id).next_due_at is None


def test_escalation_mistakes_are_refused_naming_line_and_field(
    escalating: Config, session: Session
) -> None:
    with pytest.raises(pipelines.PipelineFileError) as refused:
        pipelines.parse(
            """
pipelines:
  - key: support
    name: Support
    stages:
      - key: new
        name: New
        escalate:
          - after: soon
            to: [not-an-email]
          - to: [bruno@example.com]
"""
        )
    assert refused.value.problems == [
        "line 9: pipelines[0].stages[0].escalate: escalation levels need an `sla`",
        "line 9: pipelines[0].stages[0].escalate[0].after: 'soon' is not a duration such as "
        "90s, 15m, 2h or 1h30m",
        "line 10: pipelines[0].stages[0].escalate[0].to[0]: expected a staff member's email",
        "line 11: pipelines[0].stages[0].escalate[1].after: is required: how long after the "
        "breach, e.g. 15m",
    ]
    with pytest.raises(pipelines.PipelineFileError) as unknown:
        pipeline_store.load(session, pipelines.parse(CONFIG.replace("otto@", "ghost@")), T0)
    assert unknown.value.problems == [
        "line 7: stage 'new'.escalate[1].to: no staff account ghost@example.com "
        "(create it with `flask --app app users create`)"
    ]


def test_level_timers_follow_the_calendar() -> None:
    from whatsdesk import clock

    office = clock.Calendar.from_hours("UTC", {"mon-fri": ["09:00-17:00"]})
    friday_afternoon = datetime(2026, 3, 6, 16, 0, tzinfo=UTC)
    timers = sla.timers_for(friday_afternoon, 30 * 60, None, office, [60 * 60])
    assert timers.deadline_at == datetime(2026, 3, 6, 16, 30, tzinfo=UTC)
    assert timers.levels == (datetime(2026, 3, 9, 9, 30, tzinfo=UTC),)
    assert sla.level_of("level-2") == 2 and sla.level_of("breach") is None
