"""Pipelines between the database and their YAML form."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import Pipeline, Stage, StageVisit, User
from .pipelines import PipelineFileError, PipelineSpec, StageSpec


def load(session: Session, specs: list[PipelineSpec]) -> list[Pipeline]:
    """Create or update each pipeline of the file; refuses, changing nothing, on any problem."""
    problems: list[str] = []
    users = _alert_users(session, specs, problems)
    for spec in specs:
        pipeline = session.scalars(select(Pipeline).where(Pipeline.key == spec.key)).first()
        if pipeline is not None:
            problems += _removal_problems(session, pipeline, spec)
    if problems:
        raise PipelineFileError(problems)
    if any(spec.default for spec in specs):
        for other in session.scalars(select(Pipeline).where(Pipeline.is_default.is_(True))):
            other.is_default = False
    loaded = [_upsert(session, spec, users) for spec in specs]
    session.flush()
    return loaded


def _alert_users(
    session: Session, specs: list[PipelineSpec], problems: list[str]
) -> dict[str, User]:
    emails = {email for p in specs for s in p.stages for email in s.alert}
    found = {
        u.email.lower(): u
        for u in session.scalars(select(User).where(func.lower(User.email).in_(emails)))
    }
    for p in specs:
        for s in p.stages:
            for email in s.alert:
                if email not in found:
                    problems.append(
                        f"line {s.line}: stage {s.key!r}.alert: no staff account {email} "
                        "(create it with `flask --app app users create`)"
                    )
    return found


def _removal_problems(session: Session, pipeline: Pipeline, spec: PipelineSpec) -> list[str]:
    keep = {s.key for s in spec.stages}
    problems = []
    for stage in pipeline.stages:
        if stage.key not in keep and _has_history(session, stage):
            problems.append(
                f"line {spec.line}: pipeline {spec.key!r}.stages: stage {stage.key!r} is missing "
                "from the file but has cards; keep it in the file"
            )
    return problems


def _has_history(session: Session, stage: Stage) -> bool:
    return (
        session.scalars(
            select(StageVisit.id).where(StageVisit.stage_id == stage.id).limit(1)
        ).first()
        is not None
    )


def _upsert(session: Session, spec: PipelineSpec, users: dict[str, User]) -> Pipeline:
    pipeline = session.scalars(select(Pipeline).where(Pipeline.key == spec.key)).first()
    if pipeline is None:
        pipeline = Pipeline(key=spec.key)
        session.add(pipeline)
    pipeline.name = spec.name
    pipeline.is_default = spec.default
    by_key = {s.key: s for s in pipeline.stages}
    stages = []
    for position, stage_spec in enumerate(spec.stages):
        stage = by_key.get(stage_spec.key) or Stage(key=stage_spec.key)
        _apply_stage(stage, stage_spec, position, users)
        stages.append(stage)
    pipeline.stages = stages
    return pipeline


def _apply_stage(stage: Stage, spec: StageSpec, position: int, users: dict[str, User]) -> None:
    stage.name = spec.name
    stage.position = position
    stage.sla_seconds = spec.sla_seconds
    stage.warning_seconds = spec.warning_seconds
    stage.alert_users = [users[email] for email in spec.alert]


def dump(session: Session) -> list[PipelineSpec]:
    """Every pipeline as it stands, ready for pipelines.dump."""
    return [
        PipelineSpec(
            key=p.key,
            name=p.name,
            default=p.is_default,
            stages=[
                StageSpec(
                    key=s.key,
                    name=s.name,
                    sla_seconds=s.sla_seconds,
                    warning_seconds=s.warning_seconds,
                    alert=sorted(u.email for u in s.alert_users),  # a set: stable order
                )
                for s in p.stages
            ],
        )
        for p in session.scalars(select(Pipeline).order_by(Pipeline.id))
    ]
