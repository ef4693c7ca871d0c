"""course: running and reporting the labs. The top layer: it may use every other package.

- ``lab``: ``start_lab`` and ``Lab``: the mode, the header, key figures and the final check of a lab;
- ``runner``: ``smml labs``, every lab headlessly with papermill, into a run folder;
- ``report``: the run folder's HTML report and ``summary.json``;
- ``plainrun``: a lab as plain Python with papermill's parameter semantics (machines without Jupyter);
- ``exercises``: answer checks with tolerances and explanations;
- ``jupyter_kernel``: the Jupyter kernel ``smml`` registered for this environment;
- ``rehearsal``: ``smml rehearse``, every lab's real-mode branch on a CPU with twins and small sizes;
- ``l4_fit``: each lab's real-mode peak GPU memory on one L4, predicted from the real configs;
- ``durations``: each lab's real-mode run time on a g6.12xlarge, predicted from the roofline (README, INSTRUCTORS);
- ``doctor``: ``smml doctor``, what this machine has, with a verdict and a fix per line;
- ``diagrams`` and ``diagram_figures``: the course diagrams in ``assets/``, drawn from source.

Notebooks start with ``from smml_lib.course import start_lab``.

May import: common, perf, models, distributed, distributed.workers, checkpoint, cluster, serving, cost.
"""

from smml_lib.course.lab import start_lab

__all__ = ["start_lab"]
