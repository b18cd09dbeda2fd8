"""The bot's words: languages, durations, places in line, opening times, keywords."""

from __future__ import annotations

import string
from datetime import datetime

import pytest

from whatsdesk import bot
from whatsdesk.pipelines import PipelineFileError, parse


@pytest.mark.parametrize(
    ("lang", "seconds", "said"),
    [
        ("en", 120, "2 minutes"),
        ("en", 5400, "1 hour 30 minutes"),
        ("pt-BR", 5400, "1 hora e 30 minutos"),
        ("es", 90061, "1 día y 1 hora"),
        ("es", 1, "1 segundo"),
        ("pt-BR", 0, "0 segundos"),
    ],
)
def test_waits_are_spoken_in_the_pipelines_language(lang: str, seconds: int, said: str) -> None:
    assert bot.spoken(seconds, lang) == said


@pytest.mark.parametrize(
    ("position", "lang", "said"),
    [
        (1, "en", "1st"),
        (2, "en", "2nd"),
        (3, "en", "3rd"),
        (11, "en", "11th"),
        (23, "en", "23rd"),
        (4, "pt-BR", "4º"),
        (4, "es", "4º"),
    ],
)
def test_places_in_line_read_as_ordinals(position: int, lang: str, said: str) -> None:
    assert bot.ordinal(position, lang) == said


@pytest.mark.parametrize(
    ("lang", "said"),
    [("en", "102nd or later"), ("pt-BR", "102º ou mais"), ("es", "102º o más")],
)
def test_a_place_beyond_those_counted_reads_as_the_least_it_is(lang: str, said: str) -> None:
    assert bot.ordinal(102, lang, or_later=True) == said


@pytest.mark.parametrize(
    ("seconds", "rounded"), [(1, 60), (240, 240), (700, 720), (3700, 4500), (20000, 21600)]
)
def test_usual_waits_are_rounded_up_to_what_people_say(seconds: int, rounded: int) -> None:
    assert bot.friendly_wait(seconds) == rounded


@pytest.mark.parametrize(
    ("code", "lang"),
    [("pt-BR", "pt-BR"), ("pt", "pt-BR"), ("es-MX", "es"), ("fr", "en"), (None, "en")],
)
def test_a_language_code_picks_a_supported_language(code: str | None, lang: str) -> None:
    assert bot.language(code) == lang


@pytest.mark.parametrize(
    ("body", "lang", "command"),
    [
        ("STOP", "en", "stop"),
        (" stop! ", "en", "stop"),
        ("Situação", "pt-BR", "status"),
        ("parar", "pt-BR", "stop"),
        ("ALTA", "es", "start"),
        ("STATUS", "es", "status"),  # the English words work in every language
        ("stop sending me ads", "en", None),
        ("", "en", None),
    ],
)
def test_whole_message_keywords_are_commands(body: str, lang: str, command: str | None) -> None:
    assert bot.command_of(body, lang) == command


def test_a_pipeline_can_add_its_own_keywords() -> None:
    assert bot.command_of("cancelar", "pt-BR", {"stop": ["CANCELAR"]}) == "stop"


@pytest.mark.parametrize(
    ("local", "lang", "said"),
    [
        (datetime(2026, 10, 10, 9, 0), "en", "tomorrow at 09:00"),
        (datetime(2026, 10, 9, 13, 0), "en", "today at 13:00"),
        (datetime(2026, 10, 13, 9, 0), "pt-BR", "na terça-feira às 09:00"),
        (datetime(2026, 10, 12, 9, 0), "es", "el lunes a las 09:00"),
        (datetime(2026, 10, 30, 9, 0), "en", "on 2026-10-30 at 09:00"),
    ],
)
def test_the_next_opening_is_said_as_people_say_it(local: datetime, lang: str, said: str) -> None:
    assert bot.opening(local, datetime(2026, 10, 9, 23, 59), lang) == said


@pytest.mark.parametrize(
    ("local", "lang", "said"),
    [
        (datetime(2026, 10, 9, 13, 50), "en", "by 13:50 today"),
        (datetime(2026, 10, 10, 9, 30), "pt-BR", "até as 09:30 de amanhã"),
        (datetime(2026, 10, 12, 10, 55), "en", "by 10:55 on Monday"),
        (datetime(2026, 10, 12, 10, 55), "pt-BR", "até as 10:55 de segunda-feira"),
        (datetime(2026, 10, 12, 10, 55), "es", "antes de las 10:55 del lunes"),
        (datetime(2026, 10, 30, 9, 0), "es", "antes de las 09:00 del 2026-10-30"),
    ],
)
def test_when_a_wait_ends_is_said_as_people_say_it(local: datetime, lang: str, said: str) -> None:
    assert bot.by_when(local, datetime(2026, 10, 9, 11, 0), lang) == said


def test_a_wait_past_closing_is_said_as_when_it_ends() -> None:
    friday, monday = datetime(2026, 10, 9, 17, 55), datetime(2026, 10, 12, 10, 55)
    wait = bot.Wait(1, 7200, True, by_local=monday, today_local=friday, zone="Europe/Lisbon")

    assert (
        bot.Texts("en")
        .acknowledgement(None, "Support", wait)
        .endswith(
            "You are 1st in line; at our usual pace you'll have an answer by 10:55 on Monday "
            "(Europe/Lisbon time)."
        )
    )
    assert bot.Texts("es").status("Soporte", wait) == (
        "Eres el 1º en la fila; a nuestro ritmo habitual tendrás una respuesta antes de las "
        "10:55 del lunes (hora de Europe/Lisbon)."
    )


def test_a_pipelines_texts_replace_the_built_in_ones() -> None:
    texts = bot.Texts("en", {"received": "Got it."})
    ack = texts.acknowledgement("Ann", "Support", bot.Wait(2, 300, False))

    assert ack == (
        "Hi Ann! Got it. You are 2nd in line; a person from our Support team will answer "
        "within 5 minutes."
    )


@pytest.mark.parametrize("lang", bot.LANGUAGES)
def test_each_built_in_text_uses_only_what_it_is_given(lang: str) -> None:
    used = {
        key: {field for _, field, _, _ in string.Formatter().parse(text) if field}
        for key, text in bot.TEXTS[lang].items()
    }
    not_given = {key: fields - set(bot.PLACEHOLDERS.get(key, ())) for key, fields in used.items()}
    assert {key: fields for key, fields in not_given.items() if fields} == {}
    assert used["wait_promise"] == {"position", "team", "wait"}  # what is given is used


def test_a_stored_text_that_cannot_be_filled_in_gives_way_to_the_built_in_one() -> None:
    texts = bot.Texts("en", {"received": "Thanks! We answer within {wait}."})
    ack = texts.acknowledgement(None, "Support", bot.Wait(1, 300, False))

    assert ack.startswith("Hi! Thanks for your message, it has reached us. You are 1st in line")


def test_a_stored_text_with_a_format_gives_way_to_the_built_in_one() -> None:
    """Stored before formats were refused: `{name:>9999999}` would build a huge text."""
    texts = bot.Texts("en", {"greeting": "Hi {name:>9999999}!"})

    assert texts.say("greeting", name="Maria") == "Hi Maria!"


def test_without_history_or_sla_the_bot_promises_no_number() -> None:
    ack = bot.Texts("en").acknowledgement(None, "Sales", bot.Wait(1, None, False))

    assert ack.endswith(
        "You are 1st in line; a person from our Sales team will answer as soon as possible."
    )


PIPELINE = """
pipelines:
  - key: p
    name: P
{extra}
    stages: [{{key: s, name: S}}]
"""


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("    language: fr", "line 5: pipelines[0].language: one of en, pt-BR, es, please"),
        ("    texts: {hello: Hi}", "line 5: pipelines[0].texts.hello: unknown field"),
        (
            "    texts: {received: 'Hi {name}'}",
            "line 5: pipelines[0].texts.received: takes no placeholders",
        ),
        (
            "    texts: {greeting_anonymous: 'Hi {name}'}",
            "line 5: pipelines[0].texts.greeting_anonymous: takes no placeholders",
        ),
        (
            "    texts: {wait_unknown: 'Within {wait}'}",
            "line 5: pipelines[0].texts.wait_unknown: may only use {position}, {team}",
        ),
        (
            "    texts: {status_answered: '{position} in line'}",
            "line 5: pipelines[0].texts.status_answered: may only use {team}",
        ),
        ("    keywords: {quit: [SAIR]}", "line 5: pipelines[0].keywords.quit: unknown field"),
        (
            "    keywords: {stop: [{a: b}]}",
            "line 5: pipelines[0].keywords.stop[0]: expected a text, not a list or a mapping",
        ),
        ("    reopen: {stage: s}", "line 5: pipelines[0].reopen.within: is required"),
        ("    reopen: {within: 1d, stage: x}", "line 5: pipelines[0].reopen.stage: no such stage"),
    ],
)
def test_bot_settings_with_mistakes_are_refused_naming_line_and_field(
    extra: str, problem: str
) -> None:
    with pytest.raises(PipelineFileError) as refused:
        parse(PIPELINE.format(extra=extra))

    assert any(p.startswith(problem) for p in refused.value.problems), refused.value.problems


def test_bot_settings_survive_a_dump_and_a_parse() -> None:
    from whatsdesk.pipelines import dump

    extra = (
        "    language: pt-BR\n    texts: {received: Recebido.}\n"
        "    keywords: {stop: [CANCELAR]}\n    reopen: {within: 1d, stage: s}"
    )
    spec = parse(PIPELINE.format(extra=extra)).pipelines[0]
    again = parse(dump(parse(PIPELINE.format(extra=extra)))).pipelines[0]

    assert (again.language, again.texts, again.keywords) == (
        "pt-BR",
        {"received": "Recebido."},
        {"stop": ["CANCELAR"]},
    )
    assert (again.reopen_seconds, again.reopen_stage) == (spec.reopen_seconds, "s") == (86400, "s")
