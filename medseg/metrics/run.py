"""Run many cases, in parallel worker processes, with a progress bar."""

from __future__ import annotations

import logging
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

from tqdm import tqdm

from medseg.errors import ConfigError, MedsegError
from medseg.metrics.case import EvalOptions, score_case
from medseg.metrics.pairing import CasePair

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseError:
    """A case that could not be scored (unreadable file, no overlap): an error, not a score."""

    case: str
    pred: str
    truth: str
    error: str


@dataclass(frozen=True)
class CohortRun:
    rows: tuple[dict[str, object], ...]
    errors: tuple[CaseError, ...]


def _score(pair: CasePair, options: EvalOptions) -> list[dict[str, object]] | CaseError:
    try:
        return score_case(pair, options)
    except MedsegError as exc:
        return CaseError(pair.case, str(pair.pred), str(pair.truth), str(exc))


def run_cases(
    pairs: tuple[CasePair, ...], options: EvalOptions, *, jobs: int = 1, progress: bool = False
) -> CohortRun:
    """Score every pair; rows come back in case order whatever order workers finish in."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    results: dict[int, list[dict[str, object]] | CaseError] = {}
    bar = tqdm(total=len(pairs), unit="case", disable=not progress, file=sys.stderr)
    try:
        if jobs == 1 or len(pairs) == 1:
            for index, pair in enumerate(pairs):
                results[index] = _score(pair, options)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=min(jobs, len(pairs))) as pool:
                futures = {pool.submit(_score, pair, options): i for i, pair in enumerate(pairs)}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
    finally:
        bar.close()
    rows: list[dict[str, object]] = []
    errors: list[CaseError] = []
    for index in range(len(pairs)):
        outcome = results[index]
        if isinstance(outcome, CaseError):
            log.info("case %s not scored: %s", outcome.case, outcome.error)
            errors.append(outcome)
        else:
            rows.extend(outcome)
    return CohortRun(tuple(rows), tuple(errors))
