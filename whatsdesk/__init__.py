"""whatsdesk: a WhatsApp support desk with SLA automation."""

from __future__ import annotations

import gc
import logging
from datetime import timedelta

from flask import Flask, current_app, g
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.orm import Session
from werkzeug.middleware.proxy_fix import ProxyFix

from .alarms import Alarms
from .config import PROJECT_ROOT, Config
from .db import session_factory

csrf = CSRFProtect()
login_manager = LoginManager()


def create_app(config: Config | None = None) -> Flask:
    """The application: configuration, extensions, blueprints, error handlers."""
    config = config or Config.from_env()
    config.check()
    app = Flask(
        __name__,
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    configure(app, config)
    from .web.forms import RowId

    app.url_map.converters["int"] = RowId  # ids in routes: what the database can hold
    register_extensions(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_commands(app)
    return app


def freeze_heap() -> None:
    """Once a process has loaded everything (Flask, SQLAlchemy, twilio, the app): move what
    it holds out of the garbage collector's reach. Those objects live as long as the process,
    and every full collection would walk them again for nothing: about 50 ms each, every few
    seconds under load, which is what a deadline or a webhook waited for."""
    gc.collect()
    gc.freeze()


def configure(app: Flask, config: Config) -> None:
    app.config.update(
        SECRET_KEY=config.secret_key,
        MAX_CONTENT_LENGTH=config.max_content_length,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=config.public_url.startswith("https://"),
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,
        # Logins are permanent sessions: the signed cookie carries when it was last used,
        # and one idle longer than this is refused (not only forgotten by the browser).
        PERMANENT_SESSION_LIFETIME=timedelta(hours=config.session_idle_hours),
    )
    if config.trusted_proxies:
        # Behind a reverse proxy the client's address and scheme come from the proxy's
        # X-Forwarded-For and -Proto (login throttling counts the client); believed only for
        # the configured number of hops, else anyone could name any address. Host and path
        # prefix are not taken from headers: PUBLIC_URL names them.
        hops = config.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    app.extensions["whatsdesk.config"] = config
    app.extensions["whatsdesk.sessions"] = session_factory(config.database_url)
    app.extensions["whatsdesk.alarms"] = Alarms(config.redis_url, config.queue_name)
    logging.basicConfig(level=logging.INFO)


def register_extensions(app: Flask) -> None:
    from .web import security

    security.register(app)  # Content-Security-Policy and the other headers
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    app.teardown_appcontext(close_session)
    app.context_processor(lambda: {"config_simulator": current_config().simulator})
    from .sla import event_label
    from .whatsapp import failure_reason

    app.add_template_global(failure_reason)  # why a message did not arrive, in words
    app.add_template_global(event_label)


def register_blueprints(app: Flask) -> None:
    from .web import (
        alerts,
        auth,
        cards,
        dashboard,
        health,
        messaging,
        metrics,
        queue,
        reports,
        settings,
        simulator,
        staff,
        webhooks,
    )

    csrf.exempt(webhooks.bp)  # Twilio signs these instead
    blueprints = (
        webhooks.bp,
        auth.bp,
        queue.bp,
        cards.bp,
        alerts.bp,
        dashboard.bp,
        health.bp,
        simulator.bp,
        metrics.bp,
        staff.bp,
        messaging.bp,
        settings.bp,
        reports.bp,
    )
    for blueprint in blueprints:
        app.register_blueprint(blueprint)


def register_errorhandlers(app: Flask) -> None:
    from .web.errors import register

    register(app)


def register_commands(app: Flask) -> None:
    from .cli import register

    register(app)


def get_session() -> Session:
    """The request's database session, opened on first use."""
    if "db_session" not in g:
        g.db_session = current_app.extensions["whatsdesk.sessions"]()
    session: Session = g.db_session
    return session


def current_config() -> Config:
    config: Config = current_app.extensions["whatsdesk.config"]
    return config


def current_alarms() -> Alarms:
    alarms: Alarms = current_app.extensions["whatsdesk.alarms"]
    return alarms


def close_session(_exc: BaseException | None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()
