"""`ausil-search` command line: a thin layer over the library.

User mistakes (bad paths, bad media, missing weights) end with one `Error:` line and exit code 1;
a traceback always means a bug.

Commands live in one module per group (`release`, `search`, `duplicates`, `training`, `weights`,
`bench`), each registered on the group defined in `base`.
"""

from .base import cli
from . import bench, duplicates, release, search, training, weights  # noqa: F401  (registers the commands)


def main() -> None:
    cli(prog_name="ausil-search")
