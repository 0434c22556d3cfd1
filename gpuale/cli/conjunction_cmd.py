"""`gpuale conjunction`: the minimum statistic of thresholded maps or run folders."""

from __future__ import annotations

from typing import Annotated

import typer

from gpuale._files import check_output_dir, claim_output_dir
from gpuale.cli._shared import (
    Connectivity,
    ConnectivityOption,
    ForceOption,
    MinVolumeOption,
    OutOption,
    QuietOption,
    ReportOption,
    _command,
    _finite,
    _input_paths,
    _user_errors,
    _write_report,
    app,
    err,
)
from gpuale.output import save_conjunction
from gpuale.runfolder import conjunction


@app.command("conjunction")
def conjunction_(
    inputs: Annotated[
        list[str],
        typer.Argument(help="Thresholded maps (zero outside their clusters) or gpuale run "
                       "folders (the thresholded z of a `global` or `contrast` run, a "
                       "`conjunction`'s own map). p maps and cluster label maps are refused.",
                       show_default=False),
    ],
    out: OutOption,
    min_volume: MinVolumeOption = 0.0,
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", help="Keep only |values| >= T in every input (values >= T, "
                     "and <= -T in signed maps); needed for unthresholded statistic maps "
                     "(e.g. z.nii.gz), which are otherwise an error.", min=0.0,
                     show_default=False),
    ] = None,
    connectivity: ConnectivityOption = Connectivity.faces,
    report: ReportOption = True,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Conjunction by the minimum statistic (Nichols et al. 2005): where every map is on.

    Signed maps (contrasts: + A>B, - B>A) give both directions: the minimum where every
    input is positive and, apart, where every input is negative (clusters.tsv's direction).
    """
    with _user_errors(), claim_output_dir(out):
        _finite(min_volume=min_volume, threshold=threshold)
        check_output_dir(out, force=force, inputs=_input_paths(inputs))
        result = conjunction(inputs, min_volume_mm3=min_volume,
                             connectivity=int(connectivity.value), threshold=threshold)
        save_conjunction(result, out, command=_command(), force=force)
        _write_report(out, report, quiet)
        if not quiet:
            directions = [c["direction"] for c in result.clusters]
            err.print(f"{len(result.clusters)} conjunction cluster(s) "
                      f"({directions.count('positive')} positive, "
                      f"{directions.count('negative')} negative); results in {out}",
                      highlight=False)
