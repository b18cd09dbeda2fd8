"""The agent workspace in a real browser: Playwright drives Debian's Chromium
(/usr/bin/chromium, installed by `make setup`) against the Procfile's web, worker and sweep
processes, with the fake Twilio server on the other side.

Full-page screenshots of the queue and of a conversation land in test-output/; with
UPDATE_DOCS_SCREENSHOTS=1 the queue's also replaces docs/queue.png (the README's picture)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from whatsdesk.config import PROJECT_ROOT, Config

from conftest import PASSWORD, inbound_form, seed
from test_end_to_end import post_signed, processes
from twilio_server import TwilioServer

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
OUTPUT = PROJECT_ROOT / "test-output"
POLL_MS = 15_000  # the queue refreshes its rows every 5 s: three chances
HOSTILE = "<script>window.pwned=1</script><b>bold</b>"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module; each test gets a context (cookies) of its own."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests drive Debian's Chromium "
            "(`make setup` installs it as root; else `sudo apt-get install -y chromium`)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-background-networking"],
            headless=True,
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the pages: {errors}"


@pytest.fixture
def desk(config: Config) -> Iterator[tuple[str, TwilioServer]]:
    """The seeded desk running as in production: (web base URL, fake Twilio)."""
    seed(config.database_url, staff_windows=True)
    with (
        TwilioServer() as twilio,
        processes(config, twilio, "web", "worker", "sweep") as web,
    ):
        yield web, twilio


def log_in(page: Page, web: str, email: str = "ana@example.com") -> None:
    page.goto(web + "/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Queue")


def customer_writes(
    web: str, twilio: TwilioServer, phone: str, name: str, body: str = "Hello"
) -> None:
    form = inbound_form(phone=phone, name=name, body=body)
    assert post_signed(web, twilio.auth_token, form) == 200
    # The acknowledgement reaching Twilio shows the card exists and the worker runs.
    twilio.wait_for(lambda sent: any(m["To"] == f"whatsapp:{phone}" for m in sent), timeout=15)


def screenshot(page: Page, name: str) -> Path:
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_new_customers_appear_on_the_open_queue_without_a_reload(
    page: Page, desk: tuple[str, TwilioServer]
) -> None:
    web, twilio = desk
    log_in(page, web)
    rows = page.locator("#queue-rows tr[data-card]")
    expect(rows).to_have_count(0)
    expect(page.locator("#queue-rows")).to_contain_text("Nobody is waiting.")
    expect(page.locator("#queue-total")).to_have_text("0")
    page.evaluate("window.sameDocument = true")

    customer_writes(web, twilio, "+5511987654321", "Maria Silva", "My order is late")
    customer_writes(web, twilio, "+5511912345678", "João Pereira", "Can I change my address?")
    customer_writes(web, twilio, "+5521998877665", "Ana Costa", "Where is my refund?")

    # The longest-waiting customer first.
    expect(rows.locator("strong")).to_have_text(
        ["Maria Silva", "João Pereira", "Ana Costa"], timeout=POLL_MS
    )
    expect(page.locator("#queue-total")).to_have_text("3")
    first = rows.first
    expect(first).to_contain_text("+5511987654321")
    expect(first).to_contain_text("Support · New")
    expect(first).to_contain_text("Unassigned")
    expect(first.locator(".preview")).to_have_text("My order is late")
    expect(first.locator(".badge")).to_contain_text("On time")
    # The waiting clock ticks in the page.
    clock = first.locator(".clock")
    expect(clock).to_have_text(re.compile(r"^\d+s$"))
    shown = clock.inner_text()
    expect(clock).not_to_have_text(shown)
    assert page.evaluate("window.sameDocument") is True, "the queue page was reloaded"
    screenshot(page, "queue.png")
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS"):
        shutil.copy(OUTPUT / "queue.png", PROJECT_ROOT / "docs" / "queue.png")

    # The backlog outgrows a page (50 rows): the pager comes in with the refresh too.
    pager = page.locator("#queue-pager")
    expect(pager).to_have_text("")
    for n in range(48):
        form = inbound_form(phone=f"+55119300{n:05d}", name=f"Customer {n:02d}")
        assert post_signed(web, twilio.auth_token, form) == 200
    expect(pager).to_contain_text("Page 1 of 2", timeout=POLL_MS)
    expect(page.locator("#queue-total")).to_have_text("51")
    expect(rows).to_have_count(50)
    assert page.evaluate("window.sameDocument") is True, "the queue page was reloaded"
    pager.get_by_role("link", name="Next →").click()
    expect(pager).to_contain_text("Page 2 of 2")
    expect(rows.locator("td").first).to_have_text("51")


def test_an_agent_takes_answers_moves_and_resolves_a_conversation(
    page: Page, desk: tuple[str, TwilioServer]
) -> None:
    web, twilio = desk
    customer_writes(web, twilio, "+5511987654321", "Maria Silva", "My order is late")
    log_in(page, web)
    page.get_by_role("link", name="Maria Silva").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Maria Silva")
    expect(page.locator(".owner")).to_have_text("Owner: nobody yet")

    page.get_by_role("button", name="Take it").click()
    expect(page.get_by_role("alert")).to_have_text("The conversation is yours.")
    expect(page.locator(".owner")).to_have_text("Owner: Ana Agent")
    expect(page.get_by_role("button", name=re.compile("Take it"))).to_have_count(0)

    reply = "Hi Maria, your order ships today."
    page.get_by_role("textbox", name=re.compile("Reply on WhatsApp")).fill(reply)
    page.get_by_role("button", name="Send reply").click()
    expect(page.get_by_role("alert")).to_have_text("Reply sent.")
    sent = twilio.wait_for(
        lambda messages: any(m.get("Body") == reply for m in messages), timeout=15
    )
    assert next(m for m in sent if m.get("Body") == reply)["To"] == "whatsapp:+5511987654321"
    expect(page.locator("#history .from-desk").last).to_contain_text(reply)
    expect(page.locator("#history .from-desk").last).to_contain_text("Ana Agent")

    page.get_by_label("Move to stage").select_option(label="In progress")
    page.get_by_role("button", name="Move").click()
    expect(page.get_by_role("alert")).to_have_text("Moved.")
    expect(page.locator(".stage-name")).to_have_text("In progress")
    expect(page.locator(".timeline tbody tr td:first-child")).to_have_text(["New", "In progress"])

    page.get_by_role("button", name="Resolve").click()
    expect(page.get_by_role("alert")).to_have_text("Resolved.")
    expect(page.locator(".where .badge")).to_have_text("✔ Resolved")
    expect(page.get_by_role("button", name="Reopen")).to_be_visible()
    expect(page.get_by_role("button", name="Send reply")).to_have_count(0)
    expect(page.locator("#history li")).to_contain_text(
        [
            "My order is late",
            "Ana Agent took the conversation",
            reply,
            "Ana Agent moved it to In progress",
            "Ana Agent resolved the conversation",
        ]
    )
    # Each message is one bubble as tall as its text, not the template's line breaks.
    lines = page.locator("#history .msg").evaluate_all(
        "bubbles => bubbles.map(b => b.getBoundingClientRect().height"
        " / parseFloat(getComputedStyle(b).lineHeight))"
    )
    assert len(lines) == 3 and max(lines) < 4, lines  # the customer's, the ack and the reply
    screenshot(page, "conversation.png")

    page.get_by_role("link", name="Queue", exact=True).click()
    expect(page.locator("#queue-rows")).to_contain_text("Nobody is waiting.")


def test_a_customers_markup_is_shown_as_text_and_never_runs(
    page: Page, desk: tuple[str, TwilioServer]
) -> None:
    web, twilio = desk
    log_in(page, web)
    # Arriving while the queue is open: the rows come in through the 5-second refresh.
    name = '<img src=x onerror="window.pwned=2">Eve'
    customer_writes(web, twilio, "+5511900000001", name, HOSTILE)
    row = page.locator("#queue-rows tr[data-card]")
    expect(row.locator(".preview")).to_have_text(HOSTILE, timeout=POLL_MS)
    expect(row.locator("strong")).to_have_text(name)

    page.reload()  # and rendered with the page
    expect(row.locator(".preview")).to_have_text(HOSTILE)
    assert page.evaluate("typeof window.pwned") == "undefined"

    row.get_by_role("link").click()
    body = page.locator("#history .from-customer .body")
    expect(body).to_have_text(HOSTILE)
    expect(body.locator("b, script")).to_have_count(0)
    expect(page.get_by_role("heading", level=1)).to_contain_text(name)
    assert page.evaluate("typeof window.pwned") == "undefined"


def test_the_login_form_lets_staff_in_and_alerts_are_for_supervisors_only(
    page: Page, desk: tuple[str, TwilioServer]
) -> None:
    web, _ = desk
    page.goto(web + "/queue")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fqueue$"))
    page.get_by_label("Email").fill("ana@example.com")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    log_in(page, web, "ana@example.com")
    expect(page).to_have_url(web + "/queue")
    expect(page.locator("header.top")).to_contain_text("Ana Agent · agent")

    expect(page.get_by_role("navigation").get_by_role("link", name="Alerts")).to_have_count(0)
    answer = page.goto(web + "/alerts")
    assert answer is not None and answer.status == 403
    expect(page.get_by_role("heading", level=1)).to_have_text("403 · Forbidden")
    expect(page.locator("main")).to_contain_text("this page is for supervisors")

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(web + "/login")
    log_in(page, web, "sofia@example.com")
    page.get_by_role("navigation").get_by_role("link", name="Alerts").click()
    expect(page).to_have_url(web + "/alerts")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Alerts")
    expect(page.locator("header.top")).to_contain_text("Sofia Supervisor · supervisor")
