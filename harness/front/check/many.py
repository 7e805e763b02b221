"""`python -m harness check --submissions DIR --out OUT`: every submission of DIR graded on a Dask cluster.

submissions.py finds the folders' kernels, grading.py runs the boots on the cluster, summary.py writes OUT.
Every argument is checked (every folder resolved) before the cluster starts; a folder without a kernel is
reported in its results, not an error of the run.
"""

from __future__ import annotations

import argparse
import sys

from ... import project
from ...pc.errors import ExitCode
from .checks import CHECKS, Status
from .grading import dask_client, grade_all
from .report import write_junit
from .submissions import find_submissions
from .summary import as_verdicts, write_outputs


def command_submissions(args: argparse.Namespace) -> int:
    build = project.BuildTree(project.default_build_dir())
    submissions = find_submissions(args.submissions, build)
    selected = [check for check in CHECKS if not args.only or check.name in args.only]
    names = [check.name for check in selected]
    args.out.mkdir(parents=True, exist_ok=True)
    with dask_client(args.scheduler, args.workers) as client:
        where = args.scheduler or f"a local cluster of {len(client.scheduler_info()['workers'])} workers"
        print(f"check: grading {len(submissions)} submissions on {where}", file=sys.stderr, flush=True)
        graded = grade_all(submissions, selected, client, screens=True, progress=sys.stderr)
    documents = write_outputs(args.out, submissions, names, graded)
    for sub in submissions:
        outcomes = graded.get(sub.name, [])
        counts = {status: sum(o.status is status for o in outcomes) for status in Status}
        note = f"not graded: {sub.problem}" if sub.problem is not None else \
            f"{counts[Status.PASS]} passed, {counts[Status.FAIL]} failed, {counts[Status.NA]} not applicable"
        document = documents[sub.name]
        print(f"{sub.name}: {note} (score {document['score']}/{document['max_score']})")
    print(f"check: results in {args.out}/NAME/results.json, summary in {args.out / 'summary.csv'} and "
          f"{args.out / 'summary.html'}")
    if args.junit is not None:
        write_junit(args.junit, [(sub.name, as_verdicts(graded.get(sub.name, []))) for sub in submissions])
    statuses = {o.status for outcomes in graded.values() for o in outcomes}
    if Status.FAIL in statuses or any(sub.problem is not None for sub in submissions):
        return ExitCode.CHECK_FAILED
    if Status.NA in statuses:
        return ExitCode.CHECK_NOT_APPLICABLE
    return ExitCode.OK
