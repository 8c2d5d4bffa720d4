"""Compile the cluster pipeline against the image of this commit:

    python -m pipelines.compile --image-repo registry.example.com/ml/v2i       # -> ...:<git commit>
    python -m pipelines.compile --image registry.example.com/ml/v2i@sha256:... # an image pinned by digest

Every step names the image by commit or digest, never by a moving tag, so KFP's cache (keyed on the image among
other things) never reuses a step's results from an older image. A commit tag is refused while tracked files have
uncommitted changes: the image built from that commit would not hold them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIGEST = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")


class CompileError(ValueError):
    pass


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def image_name(image: str | None, image_repo: str | None, commit: str, dirty: bool) -> str:
    """The image every step runs in: `image` when it is pinned by digest, else `image_repo`:`commit`."""
    if image:
        if not DIGEST.match(image):
            raise CompileError(f"--image {image}: name the image by digest (REPO@sha256:<64 hex>), or use --image-repo")
        return image
    if not image_repo or ":" in image_repo.rpartition("/")[2] or "@" in image_repo:
        raise CompileError(f"--image-repo {image_repo!r}: give the repository without a tag, e.g. registry/ml/v2i")
    if dirty:
        raise CompileError("tracked files have uncommitted changes: commit them (the image is named by commit), "
                           "or pass --image REPO@sha256:... of an image you built")  # fmt: skip
    return f"{image_repo}:{commit}"


def compile_pipeline(image: str, out: str | Path) -> Path:
    """Write the cluster pipeline with every step in `image`."""
    os.environ["V2I_IMAGE"] = image  # read by components/ when they are first imported, just below
    from kfp import compiler

    from pipelines.pipeline import v2i_pipeline

    compiler.Compiler().compile(v2i_pipeline, package_path=str(out))
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--image-repo", help="image repository; the tag is this checkout's commit")
    which.add_argument("--image", help="an image pinned by digest, REPO@sha256:...")
    parser.add_argument("--out", default="v2i_pipeline.yaml", help="YAML to write (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        commit = dirty = None
        if args.image_repo:
            commit, dirty = git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
        image = image_name(args.image, args.image_repo, commit, dirty)
    except CompileError as exc:
        print(f"pipelines.compile: {exc}", file=sys.stderr)
        return 2
    print(f"{compile_pipeline(image, args.out)} (image {image})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
