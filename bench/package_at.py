"""A runnable `recserve` package of another git revision, to benchmark it beside this one.

    python bench/package_at.py 2bab6d5 /tmp/recserve-2bab6d5
    python /tmp/recserve-2bab6d5/run.py serve --port 50062 ...   # `recserve` at 2bab6d5

The revision's Python (python/recserve, and in revisions before the package split also
server/ as recserve.server and training/ as recserve.training: the layout its
pyproject.toml installs) is taken with `git archive`; the
compiled parts (the C++ core and the generated gRPC stubs) are this installation's, so
the revision must have the same csrc/ and proto/ as the working tree: checked, and
refused otherwise (build that revision in a worktree of its own then).
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import recserve._core

ROOT = Path(__file__).resolve().parent.parent
# Where each source folder lands in the package (pyproject.toml's wheel.packages); the
# last two exist only in revisions from before the server and the trainers moved into
# python/recserve.
LAYOUT = {
    "python/recserve": "recserve",
    "server": "recserve/server",
    "training": "recserve/training",
}
COMPILED = ("kserve", "v1")  # generated stubs, next to the C++ core
# The entry point: an editable install of recserve redirects `import recserve` to the
# working tree with an import hook that wins over sys.path, so it is dropped first.
LAUNCHER = """import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("_editable")]
sys.path.insert(0, {where!r})
runpy.run_module("recserve.cli", run_name="__main__")
"""


def git(*args: str) -> bytes:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True).stdout


def package_at(revision: str, target: Path) -> Path:
    changed = git("diff", "--name-only", revision, "--", "csrc", "proto").decode().split()
    if changed:
        raise SystemExit(
            f"{revision} differs from the working tree in {', '.join(changed[:5])}: its "
            "compiled parts are not this build's; build it in a worktree of its own"
        )
    if target.exists():
        shutil.rmtree(target)
    present = set(git("ls-tree", "--name-only", revision, "--", "server", "training").split())
    layout = {k: v for k, v in LAYOUT.items() if "/" in k or k.encode() in present}
    with tarfile.open(fileobj=io.BytesIO(git("archive", revision, *layout))) as archive:
        for member in archive.getmembers():
            for source, destination in layout.items():
                if member.isfile() and member.name.startswith(source + "/"):
                    path = target / destination / member.name[len(source) + 1 :]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(archive.extractfile(member).read())  # type: ignore[union-attr]
    installed = Path(recserve._core.__file__).parent
    shutil.copy2(recserve._core.__file__, target / "recserve")
    for name in COMPILED:
        shutil.copytree(installed / name, target / "recserve" / name, dirs_exist_ok=True)
    (target / "run.py").write_text(LAUNCHER.format(where=str(target.resolve())))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="a git revision, e.g. HEAD~1 or a commit")
    parser.add_argument("target", type=Path, help="the folder to write (replaced)")
    args = parser.parse_args(argv)
    where = package_at(args.revision, args.target)
    print(f"python {where / 'run.py'} serve ...  # recserve at {args.revision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
