"""A pipeline file with a mistake of each kind, loaded over a running desk: refused with a
message naming the line and the field, and the running configuration left as it was."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from whatsdesk import configuration, pipeline_store, pipelines
from whatsdesk.config import Config
from whatsdesk.db import utcnow
from whatsdesk.models import AuditEntry
from whatsdesk.pipelines import PipelineFileError

from conftest import count

# A good file touching every section; each case below breaks one line of it.
GOOD = """\
calendars:
  - key: office
    name: Office
    timezone: America/Sao_Paulo
    hours:
      mon-fri: ["09:00-18:00"]
    holidays:
      country: BR
pipelines:
  - key: support
    name: Support
    default: true
    calendar: office
    resolution: 8h
    resolution_warning: 1h
    automation:
      agent_reply: waiting
    stages:
      - key: new
        name: New
        sla: 15m
        warning: 5m
        alert: [ana@example.com]
        escalate:
          - after: 10m
            to: [sofia@example.com]
      - key: open
        name: In progress
        sla: 1h
        reassign: least-loaded
      - key: waiting
        name: Waiting on customer
        pause: true
        timeout: {after: 1d, then: resolve}
replies:
  canned:
    - title: Hello
      text: "Hi {customer}, this is {agent}."
"""

# (what is wrong, line replaced → by what, the problem's start: "line N: field")
MISTAKES = [
    (
        "escalation levels out of order",
        "            to: [sofia@example.com]",
        "            to: [sofia@example.com]\n"
        "          - after: 5m\n"
        "            to: [ana@example.com]",
        "line 27: pipelines[0].stages[0].escalate[1].after: level 2 must not come before level 1",
    ),
    (
        "a name longer than its column",
        "        name: In progress",
        "        name: " + "In progress " * 11,
        "line 28: pipelines[0].stages[1].name: is 131 characters; at most 120",
    ),
    (
        "a NUL character",
        "        name: In progress",
        '        name: "In\\0progress"',
        "line 28: pipelines[0].stages[1].name: may not contain a NUL character",
    ),
    (
        "bad duration",
        "        sla: 15m",
        "        sla: 15 minutes",
        "line 21: pipelines[0].stages[0].sla: ",
    ),
    (
        "a duration over a year",
        "        sla: 15m",
        "        sla: 3000000d",
        "line 21: pipelines[0].stages[0].sla: must be at most 365 days",
    ),
    (
        "unknown field",
        "        pause: true",
        "        paused: true",
        "line 33: pipelines[0].stages[2].paused: unknown field",
    ),
    (
        "wrong type: text for a list",
        "        alert: [ana@example.com]",
        "        alert: ana@example.com",
        "line 23: pipelines[0].stages[0].alert: expected a list",
    ),
    (
        "wrong type: list for a flag",
        "    default: true",
        "    default: [yes]",
        "line 12: pipelines[0].default: ",
    ),
    (
        "missing key",
        "      - key: open",
        "      - kee: open",
        "line 27: pipelines[0].stages[1].kee: unknown field",
    ),
    (
        "missing name",
        "        name: In progress",
        "        sla_name: x",
        "line 27: pipelines[0].stages[1].name: is required",
    ),
    (
        "duplicate stage",
        "      - key: open",
        "      - key: new",
        "line 27: pipelines[0].stages: stage key 'new' is used twice",
    ),
    (
        "warning not shorter than the sla",
        "        warning: 5m",
        "        warning: 15m",
        "line 22: pipelines[0].stages[0].warning: must be shorter than the sla",
    ),
    (
        "unknown timezone",
        "    timezone: America/Sao_Paulo",
        "    timezone: Mars/Olympus",
        "line 4: calendars[0].timezone: unknown timezone 'Mars/Olympus'",
    ),
    (
        "bad opening hours",
        '      mon-fri: ["09:00-18:00"]',
        '      mon-fri: ["18:00-09:00"]',
        "line 6: calendars[0].hours",
    ),
    (
        "unknown calendar",
        "    calendar: office",
        "    calendar: head-office",
        "line 10: pipeline 'support'.calendar: no calendar 'head-office'",
    ),
    (
        "unknown holiday country",
        "      country: BR",
        "      country: XX",
        "line 2: calendar 'office'.holidays: ",
    ),
    (
        "unknown staff email",
        "        alert: [ana@example.com]",
        "        alert: [ghost@example.com]",
        "line 19: stage 'new'.alert: no staff account ghost@example.com",
    ),
    (
        "escalation to an unknown person",
        "            to: [sofia@example.com]",
        "            to: [nobody@example.com]",
        "line 19: stage 'new'.escalate[0].to: no staff account nobody@",
    ),
    (
        "escalation without after",
        "          - after: 10m",
        "          - later: 10m",
        "line 25: pipelines[0].stages[0].escalate[0].later: unknown field",
    ),
    (
        "escalation with a bad duration",
        "          - after: 10m",
        "          - after: soon",
        "line 25: pipelines[0].stages[0].escalate[0].after: ",
    ),
    (
        "reassign to no one",
        "        reassign: least-loaded",
        "        reassign: whoever",
        "line 30: pipelines[0].stages[1].reassign: expected `least-loaded` or",
    ),
    (
        "timeout without after",
        "        timeout: {after: 1d, then: resolve}",
        "        timeout: {then: resolve}",
        "line 34: pipelines[0].stages[2].timeout.after: is required",
    ),
    (
        "automation to an unknown stage",
        "      agent_reply: waiting",
        "      agent_reply: limbo",
        "line 17: pipelines[0].automation.agent_reply",
    ),
    (
        "resolution warning not shorter",
        "    resolution_warning: 1h",
        "    resolution_warning: 9h",
        "line 15: pipelines[0].resolution_warning: ",
    ),
    (
        "a placeholder with an attribute",
        '      text: "Hi {customer}, this is {agent}."',
        '      text: "Hi {customer.name}, this is {agent}."',
        "line 38: replies.canned[0].text: may only use {customer}",
    ),
    (
        "a placeholder with a format that would build a huge text",
        '      text: "Hi {customer}, this is {agent}."',
        '      text: "Hi {customer:>50000000}, this is {agent}."',
        "line 38: replies.canned[0].text: may only use {customer}, {agent}, {card} (write {{ "
        "and }} for a brace); unknown placeholder {customer}",
    ),
    (
        "a part repeated by YAML alias",
        "    name: Support",
        "    name: &n Support\n    calendar: *n",
        "line 12: file: YAML aliases (*n) are not accepted",
    ),
    ("not YAML", "    name: Support", "    name: [Support", "line 12: file: not valid YAML"),
    ("tab indentation", "    name: Support", "\tname: Support", "line 11: file: not valid YAML"),
]


def load(session: Session, source: str) -> None:
    """What `flask pipeline load` and the settings page's import do with a file."""
    configuration.apply(session, pipelines.parse(source), None, "import", "file", utcnow())


@pytest.fixture
def running(seeded: Config, session: Session) -> Session:
    """A desk running the good file."""
    load(session, GOOD)
    session.commit()
    return session


def test_the_good_file_loads(running: Session) -> None:
    assert [p.key for p in pipeline_store.dump(running).pipelines] == ["support"]


@pytest.mark.parametrize(
    ("old", "new", "problem"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES]
)
def test_a_mistake_is_refused_naming_line_and_field_and_changes_nothing(
    running: Session, old: str, new: str, problem: str
) -> None:
    assert GOOD.count(old + "\n") == 1, old
    before, audited = pipelines.dump(pipeline_store.dump(running)), count(running, AuditEntry)

    with pytest.raises(PipelineFileError) as refused:
        load(running, GOOD.replace(old + "\n", new + "\n"))
    running.rollback()  # what a caller does with a refused change

    assert any(p.startswith(problem) for p in refused.value.problems), refused.value.problems
    assert pipelines.dump(pipeline_store.dump(running)) == before
    assert count(running, AuditEntry) == audited


def test_a_list_or_a_mapping_where_a_text_belongs_is_refused_not_stored() -> None:
    source = """
pipelines:
  - key: support
    name: Support
    stages: [{key: new, name: New}, {key: waiting, name: Waiting}]
    automation: {customer_message: {to: new, from: [[waiting]]}}
replies:
  templates:
    - {key: follow_up, name: Follow-up, content_sid: HX0123456789abcdef0123456789abcdef,
       text: "Hi {customer}", variables: {"1": [x]}}
notifications:
  alert_template:
    content_sid: HX0123456789abcdef0123456789abcdef
    variables: {"1": {a: b}}
"""
    with pytest.raises(PipelineFileError) as refused:
        pipelines.parse(source)

    problem = "expected a text, not a list or a mapping"
    assert sorted(refused.value.problems) == [
        f"line 10: replies.templates[0].variables.1: {problem}",
        f"line 14: notifications.alert_template.variables.1: {problem}",
        f"line 6: pipelines[0].automation.customer_message.from[0]: {problem}",
    ]
