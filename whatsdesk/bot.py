"""What the desk says to customers on its own, in English, Brazilian Portuguese and Spanish
(pure: texts and decisions, no I/O)."""

from __future__ import annotations

import functools
import logging
import math
import string
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1024)  # a pipeline's texts are checked for every Texts made
def placeholder_problem(text: str, allowed: tuple[str, ...]) -> str | None:
    """What is wrong with the braces of `text`, which may name only `allowed`, plainly:
    no .attribute, [index], !conversion or :format (a format such as `{customer:>9999999}`
    would build a huge text each time it is filled in). None when nothing is."""
    known = ", ".join("{" + p + "}" for p in allowed)
    hint = f"may only use {known}" if known else "takes no placeholders"
    hint += " (write {{ and }} for a brace)"
    try:
        fields = [part[1:] for part in string.Formatter().parse(text) if part[1] is not None]
    except ValueError:
        return f"{hint}; a brace is not closed"
    unknown = [
        name for name, spec, conversion in fields if name not in allowed or spec or conversion
    ]
    return f"{hint}; unknown placeholder {{{unknown[0]}}}" if unknown else None


LANGUAGES = ("en", "pt-BR", "es")
DEFAULT_LANGUAGE = "en"

# Every text the bot sends, by language. A pipeline's `texts:` can replace any of them.
TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "greeting": "Hi {name}!",
        "greeting_anonymous": "Hi!",
        "received": "Thanks for your message, it has reached us.",
        "wait_promise": "You are {position} in line; a person from our {team} team will "
        "answer within {wait}.",
        "wait_usual": "You are {position} in line; we usually answer within {wait}.",
        "wait_unknown": "You are {position} in line; a person from our {team} team will "
        "answer as soon as possible.",
        "wait_promise_by": "You are {position} in line; a person from our {team} team will "
        "answer {by} ({zone} time).",
        "wait_usual_by": "You are {position} in line; at our usual pace you'll have an answer "
        "{by} ({zone} time).",
        "closed": "We're closed right now. We open again {opens} ({zone} time) and you'll be "
        "{position} in line.",
        "status_waiting": "You are {position} in line in {team}; we usually answer within {wait}.",
        "status_answered": "Your conversation with our {team} team is open; we'll get back to "
        "you here.",
        "status_none": "You have no open conversation with us. Write your question and we'll "
        "answer.",
        "menu": "Which team can help you? Reply with a number:",
        "menu_again": "Sorry, I didn't get that. Please reply with one of these numbers:",
        "stopped": "You won't get any more messages from us. Send START to hear from us again.",
        "started": "Welcome back! We can message you again. Send STOP at any time to stop.",
    },
    "pt-BR": {
        "greeting": "Olá, {name}!",
        "greeting_anonymous": "Olá!",
        "received": "Recebemos a sua mensagem, obrigado.",
        "wait_promise": "Você é o {position} da fila; uma pessoa da equipe de {team} vai "
        "responder em até {wait}.",
        "wait_usual": "Você é o {position} da fila; costumamos responder em até {wait}.",
        "wait_unknown": "Você é o {position} da fila; uma pessoa da equipe de {team} vai "
        "responder assim que possível.",
        "wait_promise_by": "Você é o {position} da fila; uma pessoa da equipe de {team} vai "
        "responder {by} (horário de {zone}).",
        "wait_usual_by": "Você é o {position} da fila; no nosso ritmo de costume, você terá uma "
        "resposta {by} (horário de {zone}).",
        "closed": "Estamos fechados agora. Abrimos de novo {opens} (horário de {zone}) e você "
        "será o {position} da fila.",
        "status_waiting": "Você é o {position} da fila de {team}; costumamos responder em até "
        "{wait}.",
        "status_answered": "A sua conversa com a equipe de {team} está aberta; responderemos "
        "por aqui.",
        "status_none": "Você não tem nenhuma conversa aberta conosco. Escreva a sua dúvida e "
        "responderemos.",
        "menu": "Qual equipe pode ajudar você? Responda com um número:",
        "menu_again": "Desculpe, não entendi. Responda com um destes números:",
        "stopped": "Você não receberá mais mensagens nossas. Envie VOLTAR para receber de novo.",
        "started": "Que bom ter você de volta! Envie PARAR a qualquer momento para parar.",
    },
    "es": {
        "greeting": "¡Hola, {name}!",
        "greeting_anonymous": "¡Hola!",
        "received": "Hemos recibido tu mensaje, gracias.",
        "wait_promise": "Eres el {position} en la fila; una persona del equipo de {team} te "
        "responderá en menos de {wait}.",
        "wait_usual": "Eres el {position} en la fila; solemos responder en menos de {wait}.",
        "wait_unknown": "Eres el {position} en la fila; una persona del equipo de {team} te "
        "responderá lo antes posible.",
        "wait_promise_by": "Eres el {position} en la fila; una persona del equipo de {team} te "
        "responderá {by} (hora de {zone}).",
        "wait_usual_by": "Eres el {position} en la fila; a nuestro ritmo habitual tendrás una "
        "respuesta {by} (hora de {zone}).",
        "closed": "Ahora estamos cerrados. Abrimos de nuevo {opens} (hora de {zone}) y serás "
        "el {position} en la fila.",
        "status_waiting": "Eres el {position} en la fila de {team}; solemos responder en "
        "menos de {wait}.",
        "status_answered": "Tu conversación con el equipo de {team} está abierta; te "
        "responderemos por aquí.",
        "status_none": "No tienes ninguna conversación abierta con nosotros. Escribe tu "
        "pregunta y te responderemos.",
        "menu": "¿Qué equipo puede ayudarte? Responde con un número:",
        "menu_again": "Perdona, no lo he entendido. Responde con uno de estos números:",
        "stopped": "No recibirás más mensajes nuestros. Envía ALTA para volver a recibirlos.",
        "started": "¡Bienvenido de nuevo! Envía BAJA en cualquier momento para dejar de "
        "recibir mensajes.",
    },
}
TEXT_KEYS = tuple(TEXTS[DEFAULT_LANGUAGE])
# What each text is given to fill in: a pipeline's own text may use these and no others.
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "greeting": ("name",),
    "wait_promise": ("position", "team", "wait"),
    "wait_usual": ("position", "team", "wait"),
    "wait_unknown": ("position", "team"),
    "wait_promise_by": ("position", "team", "by", "zone"),
    "wait_usual_by": ("position", "team", "by", "zone"),
    "closed": ("position", "opens", "zone"),
    "status_waiting": ("position", "team", "wait"),
    "status_answered": ("team",),
}

# Words that are commands rather than questions (matched whole, any case or accents).
KEYWORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {"stop": ("STOP", "UNSUBSCRIBE"), "start": ("START",), "status": ("STATUS",)},
    "pt-BR": {
        "stop": ("STOP", "PARAR", "SAIR"),
        "start": ("START", "VOLTAR", "INICIAR"),
        "status": ("STATUS", "SITUACAO"),
    },
    "es": {
        "stop": ("STOP", "BAJA", "PARAR"),
        "start": ("START", "ALTA"),
        "status": ("STATUS", "ESTADO"),
    },
}
COMMANDS = ("stop", "start", "status")

_UNITS = {
    "en": (("day", "days"), ("hour", "hours"), ("minute", "minutes"), ("second", "seconds")),
    "pt-BR": (("dia", "dias"), ("hora", "horas"), ("minuto", "minutos"), ("segundo", "segundos")),
    "es": (("día", "días"), ("hora", "horas"), ("minuto", "minutos"), ("segundo", "segundos")),
}
_AND = {"en": " ", "pt-BR": " e ", "es": " y "}
_WEEKDAYS = {
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "pt-BR": (
        "segunda-feira",
        "terça-feira",
        "quarta-feira",
        "quinta-feira",
        "sexta-feira",
        "sábado",
        "domingo",
    ),
    "es": ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"),
}
_ON = {"en": "on {day} at {time}", "pt-BR": "na {day} às {time}", "es": "el {day} a las {time}"}
_TODAY = {"en": "today at {time}", "pt-BR": "hoje às {time}", "es": "hoy a las {time}"}
_TOMORROW = {"en": "tomorrow at {time}", "pt-BR": "amanhã às {time}", "es": "mañana a las {time}"}


def language(code: str | None) -> str:
    """A supported language for `code` ('pt', 'pt-br', 'es-MX' …), else English."""
    wanted = (code or "").strip().lower()
    for lang in LANGUAGES:
        if wanted == lang.lower() or wanted.split("-")[0] == lang.split("-")[0].lower():
            return lang
    return DEFAULT_LANGUAGE


def spoken(seconds: float, lang: str = DEFAULT_LANGUAGE) -> str:
    """'2 minutes', '1 hora e 30 minutos': the two largest units, in words."""
    total = max(0, int(round(seconds)))
    parts = []
    for (one, many), size in zip(_UNITS[lang], (86400, 3600, 60, 1), strict=True):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count} {one if count == 1 else many}")
    return _AND[lang].join(parts[:2]) or f"0 {_UNITS[lang][3][1]}"


_OR_LATER = {"en": " or later", "pt-BR": " ou mais", "es": " o más"}


def ordinal(position: int, lang: str = DEFAULT_LANGUAGE, or_later: bool = False) -> str:
    """1st, 2nd, 23rd in English; 1º, 2º in Portuguese and Spanish; `or_later`: a place the
    customer is at least at ("102nd or later")."""
    if lang != "en":
        said = f"{position}º"
    else:
        suffix = (
            "th"
            if 10 <= position % 100 <= 20
            else {1: "st", 2: "nd", 3: "rd"}.get(position % 10, "th")
        )
        said = f"{position}{suffix}"
    return said + _OR_LATER[lang] if or_later else said


def friendly_wait(seconds: float) -> float:
    """Round a wait up to what people say: a minute, 5 minutes, 15 minutes, an hour …"""
    for step in (60, 300, 900, 1800, 3600, 86400):
        if seconds <= step * 12 or step == 86400:
            return max(step, math.ceil(seconds / step) * step)
    return seconds


def opening(local: datetime, today: datetime, lang: str = DEFAULT_LANGUAGE) -> str:
    """When the business opens, as a person says it: 'tomorrow at 09:00', 'on Monday at
    09:00' — `local` and `today` in the business's own timezone."""
    time = f"{local:%H:%M}"
    days = (local.date() - today.date()).days
    if days == 0:
        return _TODAY[lang].format(time=time)
    if days == 1:
        return _TOMORROW[lang].format(time=time)
    if days < 7:
        return _ON[lang].format(day=_WEEKDAYS[lang][local.weekday()], time=time)
    return _ON[lang].format(day=f"{local:%Y-%m-%d}", time=time)


# "By" an instant, as a person says it (`by_when`): today, tomorrow, a weekday, a date.
_BY = {
    "en": ("by {time} today", "by {time} tomorrow", "by {time} on {day}"),
    "pt-BR": ("até as {time} de hoje", "até as {time} de amanhã", "até as {time} de {day}"),
    "es": (
        "antes de las {time} de hoy",
        "antes de las {time} de mañana",
        "antes de las {time} del {day}",
    ),
}


def by_when(local: datetime, today: datetime, lang: str = DEFAULT_LANGUAGE) -> str:
    """When a wait ends, as a person says it: 'by 10:55 on Monday', 'by 09:30 tomorrow' —
    `local` and `today` in the business's own timezone."""
    time = f"{local:%H:%M}"
    days = (local.date() - today.date()).days
    same_day, next_day, on_day = _BY[lang]
    if days == 0:
        return same_day.format(time=time)
    if days == 1:
        return next_day.format(time=time)
    day = _WEEKDAYS[lang][local.weekday()] if days < 7 else f"{local:%Y-%m-%d}"
    return on_day.format(time=time, day=day)


def may_be_command(body: str) -> bool:
    """Whether the message is a single word: only then can command_of find a command in it,
    whatever the language and keywords."""
    word = _plain(body)
    return bool(word) and " " not in word


def command_of(
    body: str, lang: str, extra: Mapping[str, Sequence[str]] | None = None
) -> str | None:
    """'stop', 'start' or 'status' when the whole message is one of those words."""
    if not may_be_command(body):
        return None
    word = _plain(body)
    for command in COMMANDS:
        words = list(KEYWORDS[lang][command]) + list(KEYWORDS["en"][command])
        words += list((extra or {}).get(command, ()))
        if word in {_plain(w) for w in words}:
            return command
    return None


def _plain(text: str) -> str:
    """Upper case, no accents, no surrounding spaces or punctuation."""
    decomposed = unicodedata.normalize("NFKD", text.strip().strip(".!¡?¿ ").upper())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


@dataclass(frozen=True)
class Wait:
    """What the customer is told about their wait."""

    position: int
    seconds: float | None  # the estimate; None when there is neither history nor an SLA
    usual: bool  # the estimate comes from recent answers (else it is the SLA's promise)
    opens_local: datetime | None = None  # closed now: the next opening, in local time
    # Open now, but the wait runs past closing: when it ends, in local time.
    by_local: datetime | None = None
    today_local: datetime | None = None
    zone: str = ""
    or_later: bool = False  # more are ahead than are counted: `position` is the least it is


class Texts:
    """The bot's words for one pipeline: its language, with its own texts over the
    built-in ones."""

    def __init__(self, lang: str, overrides: Mapping[str, str] | None = None) -> None:
        """A pipeline's own text that breaks the placeholder rule (stored before it was
        checked: an unknown placeholder, a stray brace, a format such as `{name:>9999999}`
        that would build a huge text) gives way to the built-in one: the customer still
        gets an answer, and the message that called for it is still stored."""
        self.lang = language(lang)
        own = {}
        for key, text in (overrides or {}).items():
            if placeholder_problem(text, PLACEHOLDERS.get(key, ())) is None:
                own[key] = text
            else:
                log.warning(
                    "the pipeline's text %r cannot be filled in; the built-in one is used", key
                )
        self.texts = {**TEXTS[self.lang], **own}

    def say(self, key: str, **values: object) -> str:
        """The text `key` filled in."""
        return self.texts[key].format(**values)

    def acknowledgement(self, name: str | None, team: str, wait: Wait) -> str:
        """The immediate answer to a new conversation, honest about the wait."""
        greeting = self.say("greeting", name=name) if name else self.say("greeting_anonymous")
        return " ".join([greeting, self.say("received"), self._wait(team, wait)])

    def _wait(self, team: str, wait: Wait, key: str | None = None) -> str:
        position = ordinal(wait.position, self.lang, wait.or_later)
        if wait.opens_local is not None and wait.today_local is not None:
            opens = opening(wait.opens_local, wait.today_local, self.lang)
            return self.say("closed", opens=opens, zone=wait.zone, position=position)
        if wait.seconds is None:
            return self.say("wait_unknown", team=team, position=position)
        if wait.by_local is not None and wait.today_local is not None:
            by = by_when(wait.by_local, wait.today_local, self.lang)
            chosen = "wait_usual_by" if wait.usual else "wait_promise_by"
            return self.say(chosen, team=team, position=position, by=by, zone=wait.zone)
        spoken_wait = spoken(friendly_wait(wait.seconds) if wait.usual else wait.seconds, self.lang)
        chosen = key or ("wait_usual" if wait.usual else "wait_promise")
        return self.say(chosen, team=team, position=position, wait=spoken_wait)

    def menu(
        self, name: str | None, options: Sequence[tuple[str, str]], again: bool = False
    ) -> str:
        """The question that routes a new conversation to a team, options numbered."""
        lines = [f"{n}. {team}" for n, (_key, team) in enumerate(options, start=1)]
        if again:
            return "\n".join([self.say("menu_again"), *lines])
        greeting = self.say("greeting", name=name) if name else self.say("greeting_anonymous")
        return "\n".join([f"{greeting} {self.say('received')} {self.say('menu')}", *lines])

    def status(self, team: str | None, wait: Wait | None) -> str:
        """The answer to 'status': their place and expected wait, or that they were answered."""
        if team is None:
            return self.say("status_none")
        if wait is None:
            return self.say("status_answered", team=team)
        if wait.opens_local is not None or wait.by_local is not None or wait.seconds is None:
            return self._wait(team, wait)
        return self._wait(team, replace(wait, usual=True), key="status_waiting")


def menu_choice(body: str, payload: str | None, options: Sequence[tuple[str, str]]) -> str | None:
    """The key of the option the customer chose: a tapped button's payload, its number
    (digits or a keycap emoji such as 1️⃣), or its name; None when it is none of them."""
    keys = [key for key, _name in options]
    if payload in keys:
        return payload
    text = unicodedata.normalize("NFKC", body).strip().strip(".!)")
    digits = "".join(c for c in text if c.isdecimal())
    rest = "".join(c for c in text if not c.isdecimal() and c not in "\ufe0f\u20e3 .)")
    if digits and not rest and 1 <= int(digits) <= len(options):
        return keys[int(digits) - 1]
    wanted = _plain(text)
    for key, name in options:
        if wanted and wanted in (_plain(name), _plain(key)):
            return key
    return None


def acknowledgement(
    name: str | None, pipeline_name: str, first_response_seconds: int | None
) -> str:
    """The English acknowledgement for the first in line, promising the SLA."""
    wait = Wait(position=1, seconds=first_response_seconds, usual=False)
    return Texts(DEFAULT_LANGUAGE).acknowledgement(name, pipeline_name, wait)
