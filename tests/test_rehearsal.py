"""``smml rehearse`` without running it: every lab has a rehearsal, its sizes are the lab's own parameters,
and the pieces that read its output and take turns on the cluster work."""

from __future__ import annotations

from pathlib import Path

from smml_lib.cluster.host import state_dir
from smml_lib.course import rehearsal
from smml_lib.course.plainrun import code_cells, declared_parameters
from smml_lib.course.runner import discover_notebooks, lab_number

LABS = {lab_number(nb): nb for nb in discover_notebooks(include_solutions=False)}


def test_every_lab_is_rehearsed_and_changes_only_its_declared_parameters():
    assert set(rehearsal.REHEARSAL_PARAMS) == set(LABS)
    for lab, params in rehearsal.REHEARSAL_PARAMS.items():
        declared = declared_parameters(code_cells(LABS[lab]))
        assert set(params) | {"mode"} <= set(declared), (lab, set(params) - set(declared))
        for name, value in params.items():  # the same kind of value as the default (a size, not a code path)
            default = declared[name]
            if value not in (rehearsal.TWIN_1B, rehearsal.TWIN_13B) and default is not None:
                assert isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int)), \
                    (lab, name, value, default)


def test_twins_are_filled_in_and_mode_is_real():
    dirs = {rehearsal.TWIN_1B: Path("/t/1b"), rehearsal.TWIN_13B: Path("/t/13b")}
    params = rehearsal.lab_params("02-1", dirs)
    assert params["mode"] == "real" and params["big_model_id"] == "/t/13b" and params["small_model_id"] == "/t/1b"


def test_the_rehearsal_lock_is_not_the_clusters_own():
    """The cluster's start/stop lock is ``<state dir>.lock``: a lab under ``flock`` of that file would wait for
    its own parent forever (03-1 hung so in the first rehearsal)."""
    assert Path(rehearsal.CLUSTER_LOCK) != Path(str(state_dir()) + ".lock")


def test_the_check_output_is_read_back():
    text = ("Lab 00-3 · Running a model: 4/6 checks passed in 40.1 s (real mode); 2 need a GPU\n"
            "✓ generated 4 tokens per run\n- batching raises decode throughput  (needs a GPU: not judged here)\n"
            "- the KV cache makes generation faster  (needs a GPU: not judged here)\n")
    summary, unjudged = rehearsal.parse_check_output(text)
    assert summary.startswith("Lab 00-3") and unjudged == ["batching raises decode throughput",
                                                          "the KV cache makes generation faster"]
    table = rehearsal.report_markdown([rehearsal.Rehearsal("00-3", "x.ipynb", "passed", 40.0, unjudged)])
    assert "| 00-3 | passed | 40 | batching raises decode throughput; the KV cache" in table
    assert "1/1 labs passed in 40 s" in table
