"""The ``smml`` command. Each subcommand lives in the module that does the work.

    smml doctor            what this machine has, with a verdict and a fix per line
    smml labs              run every lab headlessly and write the HTML report (the main job)
    smml kernel            register the Jupyter kernel "smml" for this environment
    smml tiny              build (or locate) the offline tiny Llama
    smml bench NAME        a benchmark that prints the figure an issue asks for
    smml plainrun NB       a lab notebook as plain Python (machines without Jupyter)
    smml rehearse          every lab's real-mode branch on a CPU (random-weight twins, small sizes)

A module joins the CLI by defining ``cli(argv: list[str]) -> int`` and one entry in ``COMMANDS``.
Modules are imported only when their command runs, so ``smml --help`` is instant.
"""

from __future__ import annotations

import importlib
import sys

from smml_lib import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("smml_lib.course.doctor", "check this machine before a workshop (versions, GPUs, tokens, disk)"),
    "labs": ("smml_lib.course.runner", "run every lab notebook headlessly and write a browsable HTML report"),
    "kernel": ("smml_lib.course.jupyter_kernel", "register the Jupyter kernel 'smml' for this environment"),
    "tiny": ("smml_lib.models.tiny", "build or locate the offline tiny Llama checkpoint"),
    "bench": ("smml_lib.benchmarks", "run a benchmark that prints a target figure (smml bench --list)"),
    "plainrun": ("smml_lib.course.plainrun",
                 "run lab notebooks as plain Python, no Jupyter (e.g. on a bare GPU machine)"),
    "rehearse": ("smml_lib.course.rehearsal", "every lab's real mode on this CPU, with twins and small sizes"),
    "launch": ("smml_lib.distributed.launcher", "run a worker module under torchrun and collect per-rank results"),
    "cluster": ("smml_lib.cluster.local_cluster", "a real two-node Slurm cluster on this machine: up | status | down"),
    "serve": ("smml_lib.serving.process", "an OpenAI-compatible completion server over a Llama (tiny or real)"),
    "loadtest": ("smml_lib.serving.loadgen", "a concurrency sweep against any OpenAI-compatible server"),
    "prices": ("smml_lib.cost.pricing", "instance prices: live from AWS when credentials exist, else the snapshot"),
    "diagrams": ("smml_lib.course.diagrams", "regenerate the course diagrams in assets/ from their source"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: smml <command> [options]   (smml <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"smml: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.cli(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
