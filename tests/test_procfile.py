"""The Procfile: the one place the desk's process command lines are written."""

from __future__ import annotations

from pathlib import Path

import pytest

from whatsdesk import procfile


def test_repo_procfile_has_web_worker_sweep_and_release() -> None:
    processes = procfile.read()

    assert set(processes) == {"web", "worker", "sweep", "release"}
    assert processes["web"].startswith("gunicorn app:app ")
    assert processes["worker"].startswith("rq worker ")
    assert "--with-scheduler" in processes["worker"].split()
    assert processes["sweep"] == "python -m whatsdesk.cron --url ${REDIS_URL}"
    assert processes["release"] == "alembic upgrade head"


def test_command_fills_in_variables_and_defaults() -> None:
    web = procfile.command("web", {"PORT": "8000", "WEB_CONCURRENCY": "3"})
    worker = procfile.command("worker", {"REDIS_URL": "redis://127.0.0.1:6379/3"})

    assert web[:2] == ["gunicorn", "app:app"]
    assert web[web.index("--bind") + 1] == "0.0.0.0:8000"  # HOST unset: its default
    assert web[web.index("--workers") + 1] == "3"
    assert worker == [
        "rq",
        "worker",
        "--with-scheduler",
        "--worker-class",
        "whatsdesk.worker.Worker",
        "--url",
        "redis://127.0.0.1:6379/3",
        "whatsdesk-clock",  # timers and the sweep first
        "whatsdesk",
    ]


def test_command_uses_the_default_when_a_variable_is_empty() -> None:
    web = procfile.command("web", {"HOST": "", "PORT": "", "WEB_CONCURRENCY": ""})

    assert web[web.index("--bind") + 1] == "0.0.0.0:5000"
    assert web[web.index("--workers") + 1] == "2"


@pytest.mark.parametrize(
    "url", ["redis://:it's-secret@redis.internal:6379/0", 'redis://:a"b c@redis.internal:6379/0']
)
def test_a_value_with_quotes_or_spaces_stays_one_argument_as_written(url: str) -> None:
    worker = procfile.command("worker", {"REDIS_URL": url})

    assert worker[worker.index("--url") + 1] == url
    assert worker[-1] == "whatsdesk"


@pytest.mark.parametrize("env", [{}, {"REDIS_URL": ""}])
def test_command_without_a_required_variable_names_it(env: dict[str, str]) -> None:
    with pytest.raises(KeyError, match="REDIS_URL") as missing:
        procfile.command("worker", env)

    assert "'worker'" in str(missing.value)


def test_own_procfile_with_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "Procfile"
    path.write_text(
        "# processes: one per line\n"
        "\n"
        "web: python -m http.server ${PORT:-8000} --bind ${HOST:-127.0.0.1}\n"
        "  # worker: commented out\n"
        "#sweep: also commented out\n"
        "clock:   python clock.py --every ${EVERY}  \n",
        encoding="utf-8",
    )

    assert procfile.read(path) == {
        "web": "python -m http.server ${PORT:-8000} --bind ${HOST:-127.0.0.1}",
        "clock": "python clock.py --every ${EVERY}",
    }
    assert procfile.command("web", {"PORT": "9000"}, path) == [
        "python",
        "-m",
        "http.server",
        "9000",
        "--bind",
        "127.0.0.1",
    ]
    assert procfile.command("clock", {"EVERY": "60"}, path) == [
        "python",
        "clock.py",
        "--every",
        "60",
    ]
    with pytest.raises(KeyError, match="EVERY"):
        procfile.command("clock", {}, path)
