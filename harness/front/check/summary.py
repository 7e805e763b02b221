"""What `check --submissions DIR --out OUT` leaves: a results.json per submission, screens, and a summary table.

    OUT/NAME/results.json   Gradescope's schema, the same document `check KERNEL --results FILE` writes
    OUT/NAME/CHECK.png      the screen of each failed check's run, as it ended
    OUT/summary.csv         one row per submission, one column per check (PASS, FAIL, N/A), score, max_score
    OUT/summary.html        the same table; a failure shows its explanation and its screen, linked

A submission that could not be graded (no kernel in its folder) gets a results.json of one failed test saying
why, and an empty row with the reason, so that no student is silently left out.
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

from ...pc.errors import HarnessError
from .checks import Status, Verdict
from .grading import Outcome
from .report import results_document
from .submissions import Submission

SUBMISSION_TEST = "submission"  # the one test of a submission that could not be graded


def _write(path: Path, data: str | bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)
    except OSError as e:
        raise HarnessError(f"{path}: cannot write it ({e.strerror})") from None


def as_verdicts(outcomes: list[Outcome]) -> list[Verdict]:
    return [Verdict(o.check, o.status, o.explanation) for o in outcomes]


def submission_document(submission: Submission, outcomes: list[Outcome]) -> dict[str, object]:
    if submission.problem is not None:
        return {"score": 0, "max_score": 1,
                "tests": [{"name": SUBMISSION_TEST, "score": 0, "max_score": 1, "status": "failed",
                           "output": f"FAIL: {submission.problem}"}]}
    return results_document([(submission.name, as_verdicts(outcomes))])


def write_outputs(out: Path, submissions: list[Submission], check_names: list[str],
                  graded: dict[str, list[Outcome]]) -> dict[str, dict[str, object]]:
    """Every file listed in the module's docstring; returns each submission's results document."""
    documents = {}
    screens: dict[tuple[str, str], str] = {}
    for sub in submissions:
        outcomes = graded.get(sub.name, [])
        document = submission_document(sub, outcomes)
        documents[sub.name] = document
        _write(out / sub.stem / "results.json", json.dumps(document, indent=2) + "\n")
        for outcome in outcomes:
            if outcome.screen is not None:
                relative = f"{sub.stem}/{outcome.check}.png"
                _write(out / relative, outcome.screen)
                screens[(sub.name, outcome.check)] = relative
    _write(out / "summary.csv", summary_csv(submissions, check_names, graded, documents))
    _write(out / "summary.html", summary_html(submissions, check_names, graded, documents, screens))
    return documents


def summary_csv(submissions: list[Submission], check_names: list[str], graded: dict[str, list[Outcome]],
                documents: dict[str, dict[str, object]]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["submission", "score", "max_score", *check_names, "note"])
    for sub in submissions:
        status = {o.check: o.status.value for o in graded.get(sub.name, [])}
        document = documents[sub.name]
        writer.writerow([sub.name, document["score"], document["max_score"],
                         *(status.get(name, "") for name in check_names), sub.problem or ""])
    return text.getvalue()


STYLE = ("body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}td,th{border:1px solid #999;"
         "padding:4px;vertical-align:top;font-size:13px}.PASS{background:#d4f7d4}.FAIL{background:#f9d0d0}"
         ".NA{background:#eee}img{display:block;width:320px;margin-top:4px}p.why{max-width:28em;margin:2px 0}")


def summary_html(submissions: list[Submission], check_names: list[str], graded: dict[str, list[Outcome]],
                 documents: dict[str, dict[str, object]], screens: dict[tuple[str, str], str]) -> str:
    """A static page: one row per submission, one cell per check; a failure's cell shows why and its screen."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in check_names)
    rows = []
    for sub in submissions:
        document = documents[sub.name]
        score = f"{document['score']}/{document['max_score']}"
        link = f'<a href="{html.escape(sub.stem)}/results.json">{html.escape(sub.name)}</a>'
        if sub.problem is not None:
            rows.append(f'<tr><td>{link}</td><td>{score}</td><td class="FAIL" colspan="{len(check_names)}">'
                        f'{html.escape(sub.problem)}</td></tr>')
            continue
        by_check = {o.check: o for o in graded.get(sub.name, [])}
        cells = []
        for name in check_names:
            outcome = by_check.get(name)
            if outcome is None:
                cells.append("<td></td>")
                continue
            css = "NA" if outcome.status is Status.NA else outcome.status.value
            cell = f'<td class="{css}" title="{html.escape(outcome.explanation)}">{outcome.status.value}'
            if outcome.status is Status.FAIL:
                cell += f'<p class="why">{html.escape(outcome.explanation)}</p>'
                screen = screens.get((sub.name, name))
                if screen is not None:
                    cell += f'<a href="{html.escape(screen)}"><img src="{html.escape(screen)}" alt="screen"></a>'
            cells.append(cell + "</td>")
        rows.append(f"<tr><td>{link}</td><td>{score}</td>{''.join(cells)}</tr>")
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>check: {len(submissions)} submissions'
            f"</title><style>{STYLE}</style></head><body>\n<h1>check: {len(submissions)} submissions</h1>\n"
            f"<table><tr><th>submission</th><th>score</th>{head}</tr>\n" + "\n".join(rows) +
            "\n</table></body></html>\n")
