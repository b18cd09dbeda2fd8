"""Pipeline files: what parses, and how each mistake is named (line and field)."""

from __future__ import annotations

import textwrap

import pytest

from whatsdesk.pipelines import PipelineFileError, PipelineSpec, StageSpec, dump, parse

VALID = """\
# Durations in every accepted form.
pipelines:
  - key: support
    name: Support
    default: true
    stages:
      - key: new
        name: Waiting for first response
        sla: 90
        warning: 30s
        alert:
          - Ana@Example.com
          - bruno@example.com
      - key: open
        name: In progress
        sla: 2m
        warning: "90s"
      - key: escalated
        name: Escalated
        sla: 1h30m
      - key: waiting
        name: Waiting on customer
        sla: 1d
  - key: sales_team-2
    name: Sales
    stages:
      - key: lead
        name: Lead
"""


def problems_of(source: str) -> list[str]:
    """The problems parse reports for this file (it must refuse it)."""
    with pytest.raises(PipelineFileError) as caught:
        parse(textwrap.dedent(source))
    assert caught.value.problems, "refused without saying why"
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def only_problem(source: str) -> str:
    problems = problems_of(source)
    assert len(problems) == 1, problems
    return problems[0]


def one_stage(extra: str) -> str:
    """A one-pipeline, one-stage file with `extra` lines added to the stage (line 6 on)."""
    return "pipelines:\n  - key: p\n    name: P\n    stages:\n      - key: s\n        name: S\n" + (
        textwrap.indent(textwrap.dedent(extra), " " * 8)
    )


def test_valid_file_parses_with_every_duration_form() -> None:
    specs = parse(VALID).pipelines

    assert specs == [
        PipelineSpec(
            key="support",
            name="Support",
            default=True,
            line=3,
            stages=[
                StageSpec(
                    key="new",
                    name="Waiting for first response",
                    sla_seconds=90,
                    warning_seconds=30,
                    alert=["ana@example.com", "bruno@example.com"],
                    line=7,
                ),
                StageSpec(
                    key="open", name="In progress", sla_seconds=120, warning_seconds=90, line=14
                ),
                StageSpec(key="escalated", name="Escalated", sla_seconds=5400, line=18),
                StageSpec(key="waiting", name="Waiting on customer", sla_seconds=86400, line=21),
            ],
        ),
        PipelineSpec(
            key="sales_team-2",
            name="Sales",
            line=24,
            stages=[StageSpec(key="lead", name="Lead", line=27)],
        ),
    ]


def test_dump_then_parse_gives_the_same_pipelines() -> None:
    specs = parse(VALID)
    text = dump(specs)

    again = parse(text)

    def without_lines(items: list[PipelineSpec]) -> list[tuple[object, ...]]:
        return [
            (
                p.key,
                p.name,
                p.default,
                [(s.key, s.name, s.sla_seconds, s.warning_seconds, s.alert) for s in p.stages],
            )
            for p in items
        ]

    assert without_lines(again.pipelines) == without_lines(specs.pipelines)
    assert "sla: 1h30m" in text and "sla: 1d" in text
    assert dump(again) == text


def test_not_yaml_at_all_is_refused_naming_the_line() -> None:
    problem = only_problem(
        """\
        pipelines:
          - key: p
            name: [unclosed
          stages: x
        """
    )

    assert problem.startswith("line 4: file: not valid YAML")
    assert "\n" not in problem


def test_tab_indentation_is_refused_naming_the_line() -> None:
    problem = only_problem("pipelines:\n\t- key: p\n")

    assert problem.startswith("line 2: file: not valid YAML")


@pytest.mark.parametrize("source", ["", "\n\n", "# only a comment\n"])
def test_empty_file_is_refused(source: str) -> None:
    problem = only_problem(source)

    assert problem.startswith("line 1: file: ")
    assert "empty" in problem and "pipelines:" in problem


def test_a_file_that_is_not_a_mapping_is_refused() -> None:
    assert only_problem("- just\n- a list\n") == "line 1: file: expected a mapping of fields"


def test_no_pipelines_is_refused() -> None:
    assert only_problem("pipelines: []\n") == (
        "line 1: pipelines: at least one pipeline is required"
    )


def test_unknown_field_is_refused_with_its_path() -> None:
    problem = only_problem(one_stage("color: red\n"))

    assert problem.startswith("line 7: pipelines[0].stages[0].color: unknown field")
    assert (
        "known: alert, calendar, escalate, key, name, pause, reassign, sla, timeout, warning"
        in problem
    )


def test_unknown_top_level_field_is_refused() -> None:
    problem = only_problem(
        """\
        pipelines:
          - key: p
            name: P
            stages: [{key: s, name: S}]
        pipeline: oops
        """
    )

    assert problem.startswith("line 5: file.pipeline: unknown field")


def test_missing_stage_key_is_refused() -> None:
    problem = only_problem(
        """\
        pipelines:
          - key: p
            name: P
            stages:
              - name: Nameless key
        """
    )

    assert problem == "line 5: pipelines[0].stages[0].key: is required"


def test_missing_pipeline_name_is_refused() -> None:
    problem = only_problem(
        """\
        pipelines:
          - key: p
            stages:
              - key: s
                name: S
        """
    )

    assert problem == "line 2: pipelines[0].name: is required"


def test_empty_name_is_refused() -> None:
    problem = only_problem(
        """\
        pipelines:
          - key: p
            name: "  "
            stages: [{key: s, name: S}]
        """
    )

    assert problem == "line 3: pipelines[0].name: expected a non-empty text"


@pytest.mark.parametrize("key", ["Support", "has space", "-leading", "café", "a.b"])
def test_bad_key_characters_are_refused(key: str) -> None:
    problem = only_problem(
        f"""\
        pipelines:
          - key: "{key}"
            name: P
            stages: [{{key: s, name: S}}]
        """
    )

    assert problem.startswith("line 2: pipelines[0].key: ")
    assert "lowercase letters, digits, - or _" in problem


@pytest.mark.parametrize("duration", ["2x", "soon", "1.5h", "-5", "0", "0s", "true", "[1, 2]"])
def test_bad_duration_is_refused(duration: str) -> None:
    problem = only_problem(one_stage(f"sla: {duration}\n"))

    assert problem.startswith("line 7: pipelines[0].stages[0].sla: ")


def test_bad_duration_message_shows_the_accepted_forms() -> None:
    problem = only_problem(one_stage("warning: 5 minutes\nsla: 1h\n"))

    assert problem == (
        "line 7: pipelines[0].stages[0].warning: "
        "'5 minutes' is not a duration such as 90s, 15m, 2h or 1h30m"
    )


@pytest.mark.parametrize("warning", ["10m", "15m"])
def test_warning_not_shorter_than_sla_is_refused(warning: str) -> None:
    problem = only_problem(one_stage(f"sla: 10m\nwarning: {warning}\n"))

    assert problem == "line 8: pipelines[0].stages[0].warning: must be shorter than the sla"


def test_warning_without_sla_is_refused() -> None:
    problem = only_problem(one_stage("warning: 1m\n"))

    assert problem == (
        "line 7: pipelines[0].stages[0].warning: a warning needs an `sla` to warn before"
    )


def test_duplicate_stage_keys_are_refused() -> None:
    problem = only_problem(
        """\
        pipelines:
          - key: p
            name: P
            stages:
              - key: s
                name: First
              - key: s
                name: Second
        """
    )

    assert problem == "line 7: pipelines[0].stages: stage key 's' is used twice"


def test_duplicate_pipeline_keys_are_refused() -> None:
    problem = only_problem(
        """\
        pipelines:
          - key: p
            name: First
            stages: [{key: s, name: S}]
          - key: p
            name: Second
            stages: [{key: s, name: S}]
        """
    )

    assert problem == "line 5: pipelines: pipeline key 'p' is used twice"


def test_two_default_pipelines_are_refused() -> None:
    problem = only_problem(
        """\
        pipelines:
          - key: a
            name: A
            default: true
            stages: [{key: s, name: S}]
          - key: b
            name: B
            default: true
            stages: [{key: s, name: S}]
        """
    )

    assert problem.startswith("line 6: pipelines[1].default: ")
    assert "only one pipeline can be `default: true`" in problem


def test_default_that_is_not_true_or_false_is_refused() -> None:
    problem = only_problem(
        """\
        pipelines:
          - key: a
            name: A
            default: maybe
            stages: [{key: s, name: S}]
        """
    )

    assert problem == "line 4: pipelines[0].default: expected true or false"


def test_alert_entry_that_is_not_an_email_is_refused() -> None:
    problem = only_problem(one_stage("sla: 1h\nalert:\n  - ana@example.com\n  - Ana Agent\n"))

    assert problem == "line 10: pipelines[0].stages[0].alert[1]: expected a staff member's email"


def test_alert_that_is_not_a_list_is_refused() -> None:
    problem = only_problem(one_stage("alert: ana@example.com\n"))

    assert problem == "line 7: pipelines[0].stages[0].alert: expected a list"


def test_stages_not_a_list_is_refused() -> None:
    problems = problems_of(
        """\
        pipelines:
          - key: p
            name: P
            stages:
              key: s
              name: S
        """
    )

    assert "line 5: pipelines[0].stages: expected a list" in problems


def test_pipeline_without_stages_is_refused() -> None:
    problem = only_problem(
        """\
        pipelines:
          - key: p
            name: P
        """
    )

    assert problem == "line 2: pipelines[0].stages: at least one stage is required"


def test_several_mistakes_are_all_reported() -> None:
    problems = problems_of(
        """\
        pipelines:
          - key: Bad Key
            name: P
            default: true
            stages:
              - key: s
                name: S
                sla: 2x
                colour: red
              - key: s
                name: T
                sla: 5m
                warning: 5m
                alert: [nobody]
          - key: q
            default: true
            stages: [{key: t, name: T}]
        """
    )

    assert problems == [
        "line 2: pipelines[0].key: 'Bad Key' must be lowercase letters, digits, - or _",
        "line 9: pipelines[0].stages[0].colour: unknown field (known: alert, calendar, "
        "escalate, key, name, pause, reassign, sla, timeout, warning)",
        "line 8: pipelines[0].stages[0].sla: '2x' is not a duration such as 90s, 15m, 2h or 1h30m",
        "line 13: pipelines[0].stages[1].warning: must be shorter than the sla",
        "line 14: pipelines[0].stages[1].alert[0]: expected a staff member's email",
        "line 10: pipelines[0].stages: stage key 's' is used twice",
        "line 15: pipelines[1].name: is required",
        "line 15: pipelines[1].default: only one pipeline can be `default: true` "
        "(pipelines[0] already is)",
    ]


def test_a_stage_that_times_out_into_itself_is_refused() -> None:
    problem = only_problem(one_stage("timeout: {after: 1h, then: s}\n"))

    assert problem == (
        "line 7: pipelines[0].stages[0].timeout.then: a stage cannot time out into itself "
        "(it would start again and again)"
    )


def test_automation_for_a_new_conversation_cannot_say_where_it_comes_from() -> None:
    source = (
        "pipelines:\n  - key: p\n    name: P\n    automation:\n"
        "      new_conversation: {to: s, from: [s]}\n"
        "    stages:\n      - key: s\n        name: S\n"
    )

    problem = only_problem(source)

    assert problem.startswith(
        "line 5: pipelines[0].automation.new_conversation.from: unknown field"
    )
